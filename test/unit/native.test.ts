// Unprivileged checks of the native addon loader and surface: it loads, exports exactly what addon.ts declares, shares the event vocabulary with protocol.ts, rejects bad arguments cleanly.

import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EtdError, isEtdError } from '../../src/errors.js';
import { ADDON_FUNCTIONS } from '../../src/native/addon.js';
import { loadEngine } from '../../src/native/engine.js';
import {
  addonCandidates,
  loadedAddonPath,
  loadTransparent,
  loadTransparentFrom,
  SOCKET_FUNCTIONS,
  type TransparentAddon,
  TransparentSyscallError,
} from '../../src/native/transparent.js';
import type { EngineState } from '../../src/proxy/protocol.js';
import * as protocol from '../../src/proxy/protocol.js';

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const openFds = (): number => readdirSync('/proc/self/fd').length;

/** Calls `fn` expecting a throw; returns what was thrown. */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

/** The raw binary, bypassing the TS wrapper, typed loosely on purpose: these tests feed it wrong types. */
function raw(): Record<string, (...args: unknown[]) => unknown> {
  loadTransparent();
  const p = loadedAddonPath();
  if (!p) throw new Error('addon path unknown after load');
  return createRequire(import.meta.url)(p) as Record<string, (...args: unknown[]) => unknown>;
}

describe('native addon loader', () => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'etd-native-test-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('loads from native/build/Release, the first candidate for both src/ and dist/', () => {
    const addon = loadTransparent();
    expect(addon).toBe(loadTransparent()); // cached
    expect(loadedAddonPath()).toBe(path.resolve(import.meta.dirname, '../../native/build/Release/etd_transparent.node'));
    expect(addonCandidates()[0]).toBe(loadedAddonPath());
  });

  it('the binary exports exactly what addon.ts declares (both directions); each wrapper exactly its own', () => {
    const exported = Object.keys(raw()).sort();
    expect(exported.filter((n) => !(ADDON_FUNCTIONS as readonly string[]).includes(n))).toEqual([]); // nothing undeclared
    expect(ADDON_FUNCTIONS.filter((n) => !exported.includes(n))).toEqual([]); // nothing missing
    expect(exported).toEqual([...ADDON_FUNCTIONS]);
    for (const name of exported) expect(typeof raw()[name]).toBe('function');
    expect(Object.keys(loadEngine()).sort()).toEqual([
      'close',
      'connect',
      'counts',
      'defineProfile',
      'drop',
      'fault',
      'hold',
      'inspect',
      'listen',
      'reply',
      'start',
      'stop',
      'threadCounts',
      'threadStart',
      'unlisten',
    ]);
    const addon = loadTransparent();
    expect(Object.keys(addon).sort()).toEqual([...SOCKET_FUNCTIONS]);
    for (const name of SOCKET_FUNCTIONS) expect(typeof addon[name]).toBe('function');
  });

  it('native/src/types.h has the event codes and state names of protocol.ts', () => {
    const header = readFileSync(path.resolve(import.meta.dirname, '../../native/src/types.h'), 'utf8');
    const cCodes = Object.fromEntries([...header.matchAll(/\b(EV_[A-Z_]+) = (\d+)\b/g)].map((m) => [m[1]!, Number(m[2])]));
    const tsCodes = Object.fromEntries(Object.entries(protocol).filter(([k]) => k.startsWith('EV_')));
    expect(Object.keys(cCodes).length).toBeGreaterThan(0);
    expect(cCodes).toEqual(tsCodes);
    const cStates = new Set([...header.matchAll(/return "([a-z]+)";/g)].map((m) => m[1]));
    const tsStates: Record<EngineState, true> = {
      new: true,
      held: true,
      waiting: true,
      connecting: true,
      greeting: true,
      relaying: true,
      closing: true,
    };
    expect(cStates).toEqual(new Set(Object.keys(tsStates)));
  });

  it('a failed load names every path tried and how to fix it', () => {
    const notAddon = path.join(tmp, 'not-an-addon.cjs');
    writeFileSync(notAddon, 'module.exports = { hello() {} };\n');
    const garbage = path.join(tmp, 'garbage.node');
    writeFileSync(garbage, 'not an ELF file');
    const missing = path.join(tmp, 'missing.node');
    const e = thrown(() => loadTransparentFrom([missing, garbage, notAddon]));
    expect(isEtdError(e, 'ETD_ERR_NATIVE_LOAD')).toBe(true);
    const msg = (e as EtdError).message;
    expect(msg).toContain(`${missing}: not found`);
    expect(msg).toContain(`${garbage}: `);
    expect(msg).toContain(`${notAddon}: loaded, but exports [hello]: missing [${ADDON_FUNCTIONS.join(', ')}] (built from older sources?)`);
    expect(msg).toMatch(/none loaded — run npm run install \(needs g\+\+, make, python3\)$/);
    expect((e as EtdError).hint).toBe('run npm run install (needs g++, make, python3)');
  });
});

describe('native addon arguments', () => {
  const bad: Array<[string, unknown[], 'TypeError' | 'RangeError', RegExp]> = [
    [
      'transparentSocket',
      ['4', '10.0.0.1', 0, 0],
      'TypeError',
      /^transparentSocket\(family, address, mark, synCount\): family must be the number 4 or 6, got string$/,
    ],
    ['transparentSocket', [4, 167772161, 0, 0], 'TypeError', /address must be a string, got number$/],
    ['transparentSocket', [4, '10.0.0.1', '1', 0], 'TypeError', /mark must be a number, got string$/],
    ['transparentSocket', [4, '10.0.0.1', 0, null], 'TypeError', /synCount must be a number, got null$/],
    ['transparentSocket', [4, '10.0.0.1', 0, 1n], 'TypeError', /synCount must be a number, got bigint$/],
    ['transparentSocket', [4, '10.0.0.1', 0], 'TypeError', /expected 4 arguments, got 3$/],
    ['transparentSocket', [4, '10.0.0.1', 0, 0, 0], 'TypeError', /expected 4 arguments, got 5$/],
    ['transparentSocket', [5, '10.0.0.1', 0, 0], 'RangeError', /family must be 4 or 6, got 5$/],
    ['transparentSocket', [4, '10.0.0.1', -1, 0], 'RangeError', /mark must be an integer from 0 to 4294967295, got -1$/],
    ['transparentSocket', [4, '10.0.0.1', 2 ** 32, 0], 'RangeError', /mark must be an integer from 0 to 4294967295, got 4294967296$/],
    ['transparentSocket', [4, '10.0.0.1', 1.5, 0], 'RangeError', /mark must be an integer .* got 1\.5$/],
    ['transparentSocket', [4, '10.0.0.1', 0, 128], 'RangeError', /synCount must be an integer from 0 to 127, got 128$/],
    ['transparentSocket', [4, '10.0.0.1', 0, NaN], 'RangeError', /synCount must be an integer from 0 to 127, got NaN$/],
    [
      'transparentListener',
      [6, '::1', 65536, 8],
      'RangeError',
      /^transparentListener\(family, address, port, backlog, \{ reusePort \}\?\): port must be an integer from 0 to 65535, got 65536$/,
    ],
    ['transparentListener', [6, '::1', 25, 0], 'RangeError', /backlog must be an integer from 1 to 2147483647, got 0$/],
    ['transparentListener', [6, '::1', 25, Infinity], 'RangeError', /backlog must be .* got Infinity$/],
    ['transparentListener', [{}, '::1', 25, 8], 'TypeError', /family must be the number 4 or 6, got object$/],
    ['transparentListener', [4, '127.0.0.1', 25, 8, { reusePort: 1 }], 'TypeError', /reusePort must be a boolean, got number$/],
    ['transparentListener', [4, '127.0.0.1', 25, 8, true], 'TypeError', /options must be an options object, got boolean$/],
    ['transparentListener', [4, '127.0.0.1', 25, 8, {}, 0], 'TypeError', /expected 4 or 5 arguments, got 6$/],
    ['closeFd', ['3'], 'TypeError', /^closeFd\(fd\): fd must be a number, got string$/],
    ['closeFd', [-1], 'RangeError', /^closeFd\(fd\): fd must be an integer from 0 to 2147483647, got -1$/],
    ['closeFd', [], 'TypeError', /^closeFd\(fd\): expected 1 arguments, got 0$/],
    [
      'plainListener',
      [4, '127.0.0.1', 0, 1, false],
      'TypeError',
      /^plainListener\(\{ family, address, port, backlog, v6only, freebind\?, reusePort\? \}\): expected 1 arguments, got 5$/,
    ],
    ['plainListener', [{ family: 4, address: '127.0.0.1', port: 0, backlog: 1 }], 'TypeError', /v6only must be a boolean, got undefined$/],
    [
      'plainListener',
      [{ family: 4, address: '127.0.0.1', port: 70000, backlog: 1, v6only: false }],
      'RangeError',
      /port must be an integer from 0 to 65535, got 70000$/,
    ],
    [
      'plainListener',
      [{ family: 4, address: '127.0.0.1', port: 0, backlog: 1, v6only: false, reusePort: 'yes' }],
      'TypeError',
      /reusePort must be a boolean, got string$/,
    ],
    ['sockName', ['3'], 'TypeError', /^sockName\(fd\): fd must be a number, got string$/],
  ];

  const show = (args: unknown[]): string =>
    args.map((a) => (typeof a === 'bigint' ? `${a}n` : typeof a === 'number' ? String(a) : JSON.stringify(a))).join(', ');
  const rows = bad.map(([fn, args, type, message]) => [`${fn}(${show(args)}) throws ${type}`, fn, args, type, message] as const);

  it.each(rows)('%s before any syscall', (_title, fn, args, type, message) => {
    const before = openFds();
    const e = thrown(() => raw()[fn]?.(...args));
    expect((e as Error).constructor.name).toBe(type);
    expect((e as Error).message).toMatch(message);
    expect(openFds()).toBe(before);
    // The TS wrapper lets programming errors through unchanged.
    const addon = loadTransparent() as unknown as Record<string, (...a: unknown[]) => unknown>;
    const viaWrapper = thrown(() => addon[fn]?.(...args));
    expect((viaWrapper as Error).constructor.name).toBe(type);
  });

  it.each([
    [4, '10.0.0.256'],
    [4, '::ffff:10.0.0.1'],
    [6, '10.0.0.1'],
    [6, 'localhost'],
    [4, '10.0.0.1\u0000junk'],
  ] as const)('transparentSocket(%i, %j): ETD_ERR_SYSCALL wrapping EINVAL from inet_pton', (family, address) => {
    const before = openFds();
    const e = thrown(() => loadTransparent().transparentSocket(family, address, 0, 0));
    expect(e).toBeInstanceOf(TransparentSyscallError);
    expect(e).toBeInstanceOf(EtdError);
    const err = e as TransparentSyscallError;
    expect(err).toMatchObject({ code: 'ETD_ERR_SYSCALL', sysCode: 'EINVAL', errno: -22, syscall: 'inet_pton', address });
    expect(err.message).toContain(`inet_pton: EINVAL — "${address}" is not a valid IPv${family} address literal`);
    expect(err.cause).toMatchObject({ code: 'EINVAL', errno: -22, syscall: 'inet_pton' });
    expect(openFds()).toBe(before);
  });

  it('closeFd of an fd that is not open: ETD_ERR_SYSCALL wrapping EBADF', () => {
    const e = thrown(() => loadTransparent().closeFd(999_999));
    expect(e).toMatchObject({ code: 'ETD_ERR_SYSCALL', sysCode: 'EBADF', errno: -9, syscall: 'close' });
    expect((e as Error).message).toBe('close fd 999999: EBADF — the fd is not open (was it already closed or handed to Node?)');
  });

  it('transparentSocket on loopback: an fd as root, otherwise EPERM naming the capabilities', () => {
    const addon: TransparentAddon = loadTransparent();
    if (isRoot) {
      const before = openFds();
      const fd = addon.transparentSocket(4, '127.0.0.1', 0, 2);
      expect(Number.isInteger(fd) && fd > 2).toBe(true);
      expect(openFds()).toBe(before + 1);
      addon.closeFd(fd);
      expect(openFds()).toBe(before);
    } else {
      const e = thrown(() => addon.transparentSocket(4, '127.0.0.1', 0, 2));
      expect(e).toMatchObject({ code: 'ETD_ERR_SYSCALL', sysCode: 'EPERM', errno: -1, syscall: 'setsockopt(IP_TRANSPARENT)' });
      expect((e as Error).message).toContain('CAP_NET_ADMIN or CAP_NET_RAW');
    }
  });
});
