// Loads the etd_transparent native addon (listing every path it tried) and wraps its socket helpers (the engine: engine.ts; the raw surface: addon.ts).
//
// Usage with Node's net module — verified on Node 20 by test/netns/transparent.test.ts:
//
//   Upstream from the client's address:
//     const fd = loadTransparent().transparentSocket(4, clientIp, mark, synCount); // bound, NOT connected
//     const s = new net.Socket({ fd, readable: true, writable: true });            // Node owns fd from here
//     s.connect({ host: serverIp, port });                                         // SAME synchronous turn
//     s.once('connect', ...); s.once('error', ...)   // plus a JS timer: Node has no connect timeout
//
//   Call connect() in the same synchronous turn as the constructor, with an IP literal host
//   (no DNS lookup). net.Socket({fd}) starts reading at once; if the event loop polls the still
//   unconnected fd, read() fails with ENOTCONN, Node destroys the socket and closes the fd, and a
//   later connect() then SILENTLY opens a new, ordinary socket from etd's own address. In the
//   same turn, connect() reaches the kernel (nextTick) before any poll and everything works:
//   'connect' fires, failures arrive as normal 'error's (syscall 'connect', ECONNREFUSED,
//   ETIMEDOUT after TCP_SYNCNT retries), and s.localAddress is the client's address.
//
//   Transparent listener:
//     const fd = loadTransparent().transparentListener(4, address, port, backlog);
//     (or ..., backlog, { reusePort: true }) for one of several sockets on the same port (SO_REUSEPORT)
//     server.listen({ fd }, backlog, onListening);   // Node owns fd from here
//
//   Node ignores `backlog` inside the options object when `fd` is given and re-listens with 511;
//   pass it as the second argument as above to keep it.
//
// fd ownership: a returned fd belongs to the caller. Hand it to Node (which then closes it) or
// call closeFd on it — never both. The addon closes its own fds on every error path.

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EtdError } from '../errors.js';
import { PACKAGE_ROOT } from '../paths.js';
import { ADDON_FUNCTIONS, type NativeAddon } from './addon.js';

/** The socket helpers (declared in addon.ts). Argument type errors throw TypeError, range errors RangeError; failed syscalls throw TransparentSyscallError. */
export type TransparentAddon = Pick<NativeAddon, (typeof SOCKET_FUNCTIONS)[number]>;

/** The socket helpers among the addon's exports: what loadTransparent() hands out. */
export const SOCKET_FUNCTIONS = [
  'closeFd',
  'plainListener',
  'sockName',
  'transparentListener',
  'transparentSocket',
] as const satisfies readonly (keyof NativeAddon)[];

/** The fields of the Node-style error the addon throws when a syscall fails. */
interface NativeSysError extends Error {
  code: string;
  errno: number;
  syscall: string;
  address?: string;
  port?: number;
}

function isNativeSysError(e: unknown): e is NativeSysError {
  if (!(e instanceof Error)) return false;
  const o = e as Error & Record<string, unknown>;
  return typeof o.code === 'string' && typeof o.errno === 'number' && typeof o.syscall === 'string';
}

/**
 * A failed syscall in the addon, as ETD_ERR_SYSCALL. `sysCode` keeps the errno name ('EPERM') that
 * EtdError's `code` cannot hold; `errno` is negative like Node's; `cause` is the addon's error.
 */
export class TransparentSyscallError extends EtdError {
  readonly sysCode: string;
  readonly address: string | undefined;
  readonly port: number | undefined;

  constructor(native: NativeSysError) {
    super('ETD_ERR_SYSCALL', native.message, { errno: native.errno, syscall: native.syscall, cause: native });
    this.name = 'TransparentSyscallError';
    this.sysCode = native.code;
    this.address = native.address;
    this.port = native.port;
  }
}

const ADDON_FILE = 'etd_transparent.node';

/**
 * Where the addon may be, in the order tried. src/native/*.ts (tests) and dist/native/*.js
 * (production) both sit two levels below the package root. ETD_NATIVE_ADDON overrides.
 */
export function addonCandidates(): string[] {
  const list = [
    path.join(PACKAGE_ROOT, 'native', 'build', 'Release', ADDON_FILE),
    path.join(PACKAGE_ROOT, 'native', 'build', 'Debug', ADDON_FILE),
    path.join(path.dirname(fileURLToPath(import.meta.url)), ADDON_FILE),
  ];
  const override = process.env.ETD_NATIVE_ADDON;
  return override ? [path.resolve(override), ...list] : list;
}

function hasSurface(m: unknown): m is NativeAddon {
  if (typeof m !== 'object' || m === null) return false;
  const o = m as Record<string, unknown>;
  return ADDON_FUNCTIONS.every((name) => typeof o[name] === 'function');
}

/** `fn` with the addon's Node-shaped syscall errors turned into TransparentSyscallError; other throws pass unchanged. */
export function wrapSyscallErrors<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => R {
  return (...args: A): R => {
    try {
      return fn(...args);
    } catch (e) {
      throw isNativeSysError(e) ? new TransparentSyscallError(e) : e;
    }
  };
}

/**
 * Loads the first candidate that loads and exports the whole surface, wrapped so syscall
 * failures become TransparentSyscallError. Not cached: loadTransparent() is the normal entry;
 * this one exists for diagnostics and tests. Throws ETD_ERR_NATIVE_LOAD listing every path tried.
 */
export function loadTransparentFrom(candidates: readonly string[]): { addon: TransparentAddon; path: string; module: NativeAddon } {
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  for (const candidate of candidates) {
    let loaded: unknown;
    try {
      loaded = require(candidate);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      tried.push(`  ${candidate}: ${code === 'MODULE_NOT_FOUND' ? 'not found' : e instanceof Error ? e.message : String(e)}`);
      continue;
    }
    if (hasSurface(loaded)) {
      const raw = loaded;
      const addon: TransparentAddon = Object.freeze({
        transparentSocket: wrapSyscallErrors(raw.transparentSocket.bind(raw)),
        transparentListener: wrapSyscallErrors(raw.transparentListener.bind(raw)),
        plainListener: wrapSyscallErrors(raw.plainListener.bind(raw)),
        sockName: wrapSyscallErrors(raw.sockName.bind(raw)),
        closeFd: wrapSyscallErrors(raw.closeFd.bind(raw)),
      });
      return { addon, path: candidate, module: raw };
    }
    const names = typeof loaded === 'object' && loaded !== null ? Object.keys(loaded).join(', ') : typeof loaded;
    const missing = ADDON_FUNCTIONS.filter((name) => typeof (loaded as Record<string, unknown> | null)?.[name] !== 'function');
    tried.push(`  ${candidate}: loaded, but exports [${names}]: missing [${missing.join(', ')}] (built from older sources?)`);
  }
  if (tried.length === 0) tried.push('  (no candidate paths)');
  throw new EtdError('ETD_ERR_NATIVE_LOAD', `cannot load the native addon ${ADDON_FILE}; tried:\n${tried.join('\n')}\nnone loaded`, {
    hint: 'run npm run install (needs g++, make, python3)',
  });
}

let cached: { addon: TransparentAddon; path: string; module: NativeAddon } | undefined;

/**
 * The addon, loaded on first use and cached. Syscall failures surface as TransparentSyscallError
 * (ETD_ERR_SYSCALL); throws EtdError ETD_ERR_NATIVE_LOAD when no candidate loads.
 */
export function loadTransparent(): TransparentAddon {
  cached ??= loadTransparentFrom(addonCandidates());
  return cached.addon;
}

/** The path the addon was loaded from (for `etd doctor`), or undefined before the first load. */
export function loadedAddonPath(): string | undefined {
  return cached?.path;
}

/**
 * The loaded binary's whole export object, unwrapped (loaded and cached like loadTransparent).
 * For the engine's surface of the same addon (src/native/engine.ts), which wraps what it uses.
 */
export function loadAddonModule(): NativeAddon {
  loadTransparent();
  return cached!.module;
}
