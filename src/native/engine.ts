// The native session engine as one typed object (docs/engine.md): loads it through transparent.ts and wraps the raw functions declared in addon.ts.
//
// The engine does the I/O of held and relayed connections in C++ (native/src/), on its own
// threads (each with its epoll loop and its listeners' SO_REUSEPORT sockets), and reports a few
// events per session, in batches, to one callback on the JS thread; every decision stays in
// TypeScript. It is one engine per Node environment. The types it speaks are src/proxy/protocol.ts's.
//
// Contract (details in docs/engine.md):
//   - Commands run at once on the thread that owns the id (under its lock) and return their result.
//     Commands on an id that is gone or in the wrong state return false (reply: -1, inspect:
//     null) and never throw: a batch may hold an event for a connection an earlier handler closed,
//     and an engine thread may have ended a connection whose event is still on its way.
//   - Argument errors throw TypeError/RangeError; failed syscalls of hold/listen and of connect's socket/bind throw
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
  /** Starts `threads` engine threads (default 1); `onEvents` gets every batch on this JS thread. Throws if already started (or ETD_ENGINE_FAULTS is malformed). */
  start(onEvents: (batch: P.EngineEvent[]) => void, threads?: number): void;
  /** Closes every connection, listener and handle without events, and joins the threads. Idempotent. */
  stop(): void;
  /** Starts thread `thread`: the next index, or one that ended (EV_THREAD) with fresh state. */
  threadStart(thread: number): void;
  /** Fault injection for tests (faults.h): adds `<syscall>:<n>:<ERRNO>` to a running thread, n counted from now. */
  fault(thread: number, rule: string): void;
  /** Defines profile `idx` (0..65535); a redefinition applies to new uses only. */
  defineProfile(idx: number, p: P.EngineProfile): void;
  /** Engine thread `thread` (default 0) takes a bound, listening fd (made non-blocking) and accepts on it. Throws if not started or not a listener. */
  listen(fd: number, listenerId: number, thread?: number): void;
  /** Closes every fd of the listener; accepted connections go on. */
  unlisten(listenerId: number): void;
  /** State `new` only: holds the client silently for windowMs; writes profile.teaser (if any) at once. */
  hold(id: number, h: P.EngineHold): boolean;
  /** States `new`/`held`/`waiting` (`held`: ends the window early): connects upstream (socket and source here; the connect(2) itself on the engine thread: its failure is UPSTREAM_FAILED connect), writes the preamble, reads the greeting. Failures of socket/bind throw TransparentSyscallError. */
  connect(id: number, c: P.EngineConnect): boolean;
  /** Any state before the relay: the final reply (or `first`, then the reply after the client's first line). Bytes written at once, or -1. */
  reply(id: number, r: P.EngineReply): number;
  /** Any state: RST to the client, upstream closed. No more events. */
  drop(id: number): boolean;
  /** Any state: closes both fds; a relay reports END with `cause`. */
  close(id: number, cause: string): boolean;
  /** State and byte counts of a live connection, or null. */
  inspect(id: number): P.EngineInspect | null;
  /** Summed over the threads. */
  counts(): P.EngineCounts;
  /** One row per thread. */
  threadCounts(): P.EngineThreadCounts[];
}

/** The threads' rows summed, as one engine's counts. */
export function sumCounts(rows: readonly P.EngineThreadCounts[], callbackErrors: number): P.EngineCounts {
  const out = { connections: 0, held: 0, relaying: 0, listeners: 0, fds: 0, bufferedBytes: 0, deadlines: 0, callbackErrors };
  for (const r of rows) {
    out.connections += r.connections;
    out.held += r.held;
    out.relaying += r.relaying;
    out.listeners += r.listeners;
    out.fds += r.fds;
    out.bufferedBytes += r.bufferedBytes;
    out.deadlines += r.deadlines;
  }
  return out;
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
    'engineCallbackErrors',
    'engineThreadStart',
    'engineFault',
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
    start: wrapSyscallErrors((onEvents: (batch: P.EngineEvent[]) => void, threads?: number) => raw.engineStart(onEvents, threads ?? 1)),
    stop: w(raw.engineStop),
    threadStart: w(raw.engineThreadStart),
    fault: w(raw.engineFault),
    defineProfile: w(raw.engineProfile),
    listen: wrapSyscallErrors((fd: number, listenerId: number, thread?: number) => raw.engineListen(fd, listenerId, thread ?? 0)),
    unlisten: w(raw.engineUnlisten),
    hold: w(raw.engineHold),
    connect: w(raw.engineConnect),
    reply: w(raw.engineReply),
    drop: w(raw.engineDrop),
    close: w(raw.engineClose),
    inspect: w(raw.engineInspect),
    counts: wrapSyscallErrors(() => sumCounts(raw.engineCounts(), raw.engineCallbackErrors())),
    threadCounts: w(raw.engineCounts),
  });
  cached = engine;
  return engine;
}
