// The native session engine as one typed object (docs/engine.md): loads it through transparent.ts and wraps the raw functions declared in addon.ts.
//
// The engine does the I/O of held and relayed connections in C++ (native/src/) and reports a
// few events per session, in batches, to one callback; every decision stays in TypeScript. It is
// one engine per Node environment (the main thread, or each worker thread). The types it speaks
// are src/proxy/protocol.ts's.
//
// Contract (details in docs/engine.md):
//   - Commands on an id that is gone or in the wrong state return false (reply: -1, inspect:
//     null) and never throw: a batch may hold an event for a connection an earlier handler closed.
//   - Argument errors throw TypeError/RangeError; failed syscalls of hold/connect/listen throw
//     TransparentSyscallError (syscall 'epoll_ctl', 'socket', 'connect', ...) and leave the
//     connection as it was.
//   - A connection still `new` when the callback announcing it returns is reset and reported
//     GONE 'undecided'; so is one left in `waiting` past its profile's decisionMs.
//   - An exception escaping the callback is caught by the engine and counted in
//     counts().callbackErrors; the process and the engine go on.
//   - Profiles belong to the environment and survive stop/start.

import { EtdError } from '../errors.js';
import type * as P from '../proxy/protocol.js';
import type { NativeAddon } from './addon.js';
import { loadAddonModule, loadedAddonPath, wrapSyscallErrors } from './transparent.js';

export interface Engine {
  /** Starts the engine on this thread's loop; `onEvents` gets every batch. Throws if already started (or ETD_ENGINE_FAULTS is malformed). */
  start(onEvents: (batch: P.EngineEvent[]) => void): void;
  /** Closes every connection, listener and handle without events. Idempotent. */
  stop(): void;
  /** Defines profile `idx` (0..65535); a redefinition applies to new uses only. */
  defineProfile(idx: number, p: P.EngineProfile): void;
  /** The engine takes a bound, listening fd (made non-blocking) and accepts on it. Throws if not started or not a listener. */
  listen(fd: number, listenerId: number): void;
  /** Closes every fd of the listener; accepted connections go on. */
  unlisten(listenerId: number): void;
  /** State `new` only: holds the client silently for windowMs; writes profile.teaser (if any) at once. */
  hold(id: number, h: P.EngineHold): boolean;
  /** States `new`/`held`/`waiting` (`held`: ends the window early): connects upstream, writes the preamble, reads the greeting. Sync failures throw TransparentSyscallError. */
  connect(id: number, c: P.EngineConnect): boolean;
  /** Any state before the relay: the final reply (or `first`, then the reply after the client's first line). Bytes written at once, or -1. */
  reply(id: number, r: P.EngineReply): number;
  /** Any state: RST to the client, upstream closed. No more events. */
  drop(id: number): boolean;
  /** Any state: closes both fds; a relay reports END with `cause`. */
  close(id: number, cause: string): boolean;
  /** State and byte counts of a live connection, or null. */
  inspect(id: number): P.EngineInspect | null;
  counts(): P.EngineCounts;
}

let cached: Engine | undefined;

/**
 * The engine of the addon loadTransparent() loads, cached. Throws EtdError ETD_ERR_NATIVE_LOAD
 * when the addon cannot be loaded or lacks the engine's surface.
 */
export function loadEngine(): Engine {
  if (cached) return cached;
  const raw: NativeAddon = loadAddonModule();
  const fns = [
    'engineStart',
    'engineStop',
    'engineProfile',
    'engineListen',
    'engineUnlisten',
    'engineHold',
    'engineConnect',
    'engineReply',
    'engineDrop',
    'engineClose',
    'engineInspect',
    'engineCounts',
  ] as const satisfies readonly (keyof NativeAddon)[];
  const missing = fns.filter((name) => typeof (raw as unknown as Record<string, unknown>)[name] !== 'function');
  if (missing.length > 0) {
    throw new EtdError(
      'ETD_ERR_NATIVE_LOAD',
      `the native addon ${loadedAddonPath() ?? ''} has no session engine (missing ${missing.join(', ')}); it was built from older sources`,
      { hint: 'rebuild it: npm run install (needs g++, make, python3)' },
    );
  }
  const w = <A extends unknown[], R>(f: (...args: A) => R): ((...args: A) => R) => wrapSyscallErrors((...args: A) => f.apply(raw, args));
  const engine: Engine = Object.freeze({
    start: w(raw.engineStart),
    stop: w(raw.engineStop),
    defineProfile: w(raw.engineProfile),
    listen: w(raw.engineListen),
    unlisten: w(raw.engineUnlisten),
    hold: w(raw.engineHold),
    connect: w(raw.engineConnect),
    reply: w(raw.engineReply),
    drop: w(raw.engineDrop),
    close: w(raw.engineClose),
    inspect: w(raw.engineInspect),
    counts: w(raw.engineCounts),
  });
  cached = engine;
  return engine;
}
