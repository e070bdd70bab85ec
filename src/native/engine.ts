// Types the native session engine of the etd_transparent addon (docs/engine.md) and loads it through transparent.ts; nothing else.
//
// The engine does the I/O of held and relayed connections in C++ (native/src/engine.cc) and
// reports a few events per session, in batches, to one callback; every decision stays in JS.
// It is one engine per Node environment (the main thread, or each worker thread).
//
// Choices the spec leaves open, as implemented:
//   - engineConnect: a connect(2) that fails at once (ECONNREFUSED on loopback can) throws
//     TransparentSyscallError with syscall 'connect' and sysCode the errno name, like socket/bind
//     failures; the client stays in its state. A connect that fails later is an
//     UPSTREAM_FAILED event (stage 'connect'). A connect that succeeds at once goes straight to
//     reading the greeting.
//   - connectMs in GREETING is the time from engineConnect to the established connection.
//   - timeoutMs, clientIdleMs and serverIdleMs of 0 mean no limit.
//   - A connection still `new` when the callback that announced it returns (the handler threw
//     or forgot it) is reset and reported as GONE with cause 'undecided' in a following batch.
//   - An epoll failure inside the engine (ENOMEM) ends a connection with cause
//     'engine_<errno>' (GONE before the relay, END during it).
//   - END after engineClose carries the cause given to engineClose.
//   - engineCounts().connections counts every connection the engine still owns, including one
//     finishing a final reply; `listeners` counts listening fds.
//   - Profiles are kept per environment across engineStop/engineStart.

import { EtdError } from '../errors.js';
import { loadAddonModule, loadedAddonPath, wrapSyscallErrors } from './transparent.js';

export const EV_ACCEPT = 1,
  EV_TALK = 2,
  EV_GONE = 3,
  EV_EXPIRED = 4,
  EV_UPSTREAM_FAILED = 5,
  EV_GREETING = 6,
  EV_END = 7,
  EV_ERROR = 8;

export type EngineEvent =
  | [typeof EV_ACCEPT, number, number, 4 | 6, string, number, string, number] // id, listenerId, family, peerAddress, peerPort, localAddress, localPort
  | [typeof EV_TALK, number, number, Buffer, number] // id, afterMs, evidence, bytes
  | [typeof EV_GONE, number, string] // id, cause
  | [typeof EV_EXPIRED, number, number] // id, heldMs
  | [typeof EV_UPSTREAM_FAILED, number, 'connect' | 'greeting', string, number] // id, stage, code, elapsedMs
  | [typeof EV_GREETING, number, string, number, 0 | 1] // id, code, connectMs, relaying
  | [typeof EV_END, number, string, number, number] // id, cause, bytesFromClient, bytesToClient
  | [typeof EV_ERROR, number, string, string]; // listenerId, syscall, code

export interface EngineCounts {
  connections: number;
  held: number;
  relaying: number;
  listeners: number;
  fds: number;
}

/**
 * The engine's commands (docs/engine.md, Surface). Argument errors throw TypeError/RangeError;
 * failed syscalls of synchronous commands throw TransparentSyscallError (ETD_ERR_SYSCALL, with
 * sysCode/errno/syscall). Commands on an id that is gone or in the wrong state return false
 * (engineRelease: -1) and never throw.
 */
export interface EngineAddon {
  /** Starts the engine on this thread's loop; `onEvents` gets every batch. Throws if already started. */
  engineStart(onEvents: (batch: EngineEvent[]) => void): void;
  /** Closes every connection, listener and handle without events. Idempotent. */
  engineStop(): void;
  /** Defines profile `idx` (0..65535) for new uses: action 0 drop / 1 reject with `rejectReply` (CRLF included). */
  engineProfile(idx: number, action: 0 | 1, rejectReply: string, clientIdleMs: number, serverIdleMs: number, stripPipeconnect: 0 | 1): void;
  /** The engine takes a bound, listening fd (made non-blocking) and accepts on it. Throws if not started or not a listener. */
  engineListen(fd: number, listenerId: number): void;
  /** Closes every fd of the listener; accepted connections go on. */
  engineUnlisten(listenerId: number): void;
  /** State `new` only: holds the client silently for `windowMs`. */
  engineHold(id: number, windowMs: number, profile: number): boolean;
  /**
   * States `new` and `waiting`: connects upstream (from `sourceAddress` via IP_TRANSPARENT when
   * not ''), writes `preamble`, reads the greeting. socket/setsockopt/bind and an immediate
   * connect failure (e.g. ECONNREFUSED, syscall 'connect') throw TransparentSyscallError and
   * leave the client as it was; later failures come as UPSTREAM_FAILED.
   */
  engineConnect(
    id: number,
    profile: number,
    family: 4 | 6,
    sourceAddress: string,
    synCount: number,
    targetAddress: string,
    targetPort: number,
    timeoutMs: number,
    preamble: Buffer,
  ): boolean;
  /** Before the relay: writes `text` (CRLF included), half-closes, discards until EOF or 5 s. No more events. */
  engineReply(id: number, text: string): boolean;
  /** engineReply with the last refused greeting (GREETING with relaying 0); false if there is none. */
  engineReplyGreeting(id: number): boolean;
  /** Any state: RST to the client, upstream closed. No more events. */
  engineDrop(id: number): boolean;
  /** State `new` only: the fd now belongs to the caller (net.Socket({ fd })); -1 otherwise. */
  engineRelease(id: number): number;
  /** Any state: closes both fds; a relay reports END with `cause`. */
  engineClose(id: number, cause: string): boolean;
  engineCounts(): EngineCounts;
  /** Bytes read from and written to the client so far, or null for an unknown id (live views: GET /v1/sessions). */
  engineBytes(id: number): [number, number] | null;
  /** getsockname of any fd; IPv4-mapped addresses come back as plain IPv4. */
  sockName(fd: number): [string, number];
  /** An ordinary listening fd (non-blocking, SO_REUSEADDR, IPV6_V6ONLY = v6only for v6); the caller owns it. */
  plainListener(family: 4 | 6, address: string, port: number, backlog: number, v6only: boolean): number;
}

/** The names of the engine surface, for checking what the loaded binary exports. */
export const ENGINE_FUNCTIONS = [
  'engineClose',
  'engineConnect',
  'engineCounts',
  'engineBytes',
  'engineDrop',
  'engineHold',
  'engineListen',
  'engineProfile',
  'engineRelease',
  'engineReply',
  'engineReplyGreeting',
  'engineStart',
  'engineStop',
  'engineUnlisten',
  'plainListener',
  'sockName',
] as const satisfies readonly (keyof EngineAddon)[];

let cached: EngineAddon | undefined;

/**
 * The engine surface of the addon loadTransparent() loads, cached. Throws EtdError
 * ETD_ERR_NATIVE_LOAD when the addon cannot be loaded or predates the engine.
 */
export function loadEngine(): EngineAddon {
  if (cached) return cached;
  const raw = loadAddonModule();
  const missing = ENGINE_FUNCTIONS.filter((name) => typeof raw[name] !== 'function');
  if (missing.length > 0) {
    throw new EtdError(
      'ETD_ERR_NATIVE_LOAD',
      `the native addon ${loadedAddonPath() ?? ''} has no session engine (missing ${missing.join(', ')}); it was built from older sources`,
      { hint: 'rebuild it: npm run install (needs g++, make, python3)' },
    );
  }
  const fn = <K extends keyof EngineAddon>(name: K): EngineAddon[K] => {
    const f = raw[name] as (...args: unknown[]) => unknown;
    return wrapSyscallErrors((...args: unknown[]) => f.apply(raw, args)) as EngineAddon[K];
  };
  const addon: EngineAddon = Object.freeze({
    engineStart: fn('engineStart'),
    engineStop: fn('engineStop'),
    engineProfile: fn('engineProfile'),
    engineListen: fn('engineListen'),
    engineUnlisten: fn('engineUnlisten'),
    engineHold: fn('engineHold'),
    engineConnect: fn('engineConnect'),
    engineReply: fn('engineReply'),
    engineReplyGreeting: fn('engineReplyGreeting'),
    engineDrop: fn('engineDrop'),
    engineRelease: fn('engineRelease'),
    engineClose: fn('engineClose'),
    engineCounts: fn('engineCounts'),
    engineBytes: fn('engineBytes'),
    sockName: fn('sockName'),
    plainListener: fn('plainListener'),
  });
  cached = addon;
  return addon;
}
