// The native session engine as one typed object (docs/engine.md): loads it through transparent.ts and wraps the raw functions declared in addon.ts.
//
// The engine does the I/O of held and relayed connections in C++ (native/src/), on its own
// threads (each with its epoll loop and its listeners' SO_REUSEPORT sockets), and reports a few
// events per session, in batches, to one callback on the JS thread; every decision stays in
// TypeScript. It is one engine per Node environment. The types it speaks are src/proxy/protocol.ts's.
//
// Contract (details in docs/engine.md):
//   - hold, connect, drop and close are queued to the thread that owns the id (its inbox, one
//     eventfd wakeup per batch) and run there in order, so their syscalls stay off this thread.
//     They return true when a thread of the id runs, false when none does (stopped, or the thread
//     died: its connections' events are on their way). A queued command whose connection has
//     ended or moved on does nothing; the event that explains it reaches the callback. Their
//     failures are events: GONE engine_<errno> (an epoll_ctl of hold), UPSTREAM_FAILED connect
//     <errno> (socket, the source address, connect).
//   - reply and inspect run at once under the owning thread's lock and return their result
//     (reply: the bytes written, -1 when the id is gone or in the wrong state; inspect: null).
//   - Argument errors (a bad address literal included) throw TypeError/RangeError/TransparentSyscallError
//     at the call; failed syscalls of listen throw TransparentSyscallError.
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
  /** Queued. State `new` only: holds the client silently for windowMs; writes profile.teaser (if any) at once. */
  hold(id: number, h: P.EngineHold): boolean;
  /** Queued. States `new`/`held`/`waiting` (`held`: ends the window early): connects upstream (socket, source address, connect(2) on the engine thread: a failure is UPSTREAM_FAILED connect), writes the preamble, reads the greeting. A bad address literal throws here. */
  connect(id: number, c: P.EngineConnect): boolean;
  /** Any state before the relay: the final reply (or `first`, then the reply after the client's first line). Bytes written at once, or -1. */
  reply(id: number, r: P.EngineReply): number;
  /** Queued. Any state: RST to the client, upstream closed. No more events. */
  drop(id: number): boolean;
  /** Queued. Any state: closes both fds; a relay reports END with `cause`. */
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
