// The process's one native session engine (docs/engine.md): started with the first user, stopped with the last; routes its events; restarts a thread that died.
//
// The engine is one per Node environment, and several Apps may run in one process (tests), so
// users are counted; the engine runs as many threads as its most demanding user asked for.
// Listener ids and profiles are handed out here. Every event of a batch is handled on its own:
// a handler that throws is counted and logged once per cause, its session ends with verdict
// `error` (cause `internal_error`), and the rest of the batch goes on (an accepted connection
// whose handler threw is dropped, never held forever).

import type { Logger } from 'pino';
import { type Engine, loadEngine } from '../native/engine.js';
import {
  type EngineEvent,
  type EngineProfile,
  type EngineThreadCounts,
  EV_ACCEPT,
  EV_END,
  EV_ERROR,
  EV_EXPIRED,
  EV_GONE,
  EV_GREETING,
  EV_PROTOCOL,
  EV_TALK,
  EV_THREAD,
  EV_UPSTREAM_FAILED,
  type ProtocolTest,
  type TalkStage,
} from './protocol.js';

/** A connection the engine accepted: it waits for a command in the same turn. */
export interface NativeAccept {
  readonly eid: number;
  readonly family: 4 | 6;
  readonly peerAddress: string;
  readonly peerPort: number;
  readonly localAddress: string;
  readonly localPort: number;
}

/** A listener's side of the engine. `accepted` must give the connection a command before it returns. */
export interface EngineListener {
  accepted(a: NativeAccept): void;
  failed(syscall: string, code: string): void;
  /** Its engine thread died (its fd was closed) and was started again: bind fresh sockets for it. */
  restore?(thread: number): void;
}

/** A session's side of the engine: one method per event (docs/engine.md, Events). */
export interface EngineSession {
  talkedEarly(afterMs: number, evidence: Buffer, bytes: number, stage: TalkStage, bytesToClient: number): void;
  gone(cause: string): void;
  expired(heldMs: number): void;
  upstreamFailed(stage: 'connect' | 'greeting', code: string, elapsedMs: number): void;
  greeted(code: string, connectMs: number, relaying: boolean): void;
  ended(cause: string, bytesFromClient: number, bytesToClient: number): void;
  /** A handler of this session's events threw: the session ends (verdict `error`, cause `internal_error`). */
  failed(err: unknown): void;
  /** A protocol test caught the client during the relay; `ended`: the engine applied reject/drop (no further events). */
  caught(test: ProtocolTest, evidence: Buffer, ended: boolean, bytesFromClient: number, bytesToClient: number): void;
}

/** One engine thread as /v1/status and /metrics show it. */
export interface ThreadRow extends EngineThreadCounts {
  readonly state: 'running' | 'restarting';
  readonly restarts: number;
  /** Since it (re)started, ms. */
  readonly upMs: number;
}

/** A thread that died is started again after this, doubling while it keeps dying soon after its start. */
const RESTART_DELAY_MS = 100;
const RESTART_DELAY_MAX_MS = 5000;
const DIED_SOON_MS = 10_000;

/** Distinct handler-failure causes logged; past this they are only counted. */
const LOGGED_CAUSES_MAX = 100;

export class EngineDriver {
  readonly engine: Engine;
  private users = 0;
  private readonly sessions = new Map<number, EngineSession>();
  private readonly listeners = new Map<number, { listener: EngineListener; thread: number }>();
  private threads = 0;
  /** Per thread: restarts so far, when it last started, the pending restart. */
  private readonly restartsOf: number[] = [];
  private readonly startedAt: number[] = [];
  private readonly delayOf: number[] = [];
  private readonly restartTimers = new Map<number, NodeJS.Timeout>();
  /** Connections lost with engine threads that died, and the restarts since start. */
  lost = 0;
  restarts = 0;
  private nextListenerId = 1;
  private readonly profiles = new Map<string, number>();
  /** Profiles are built once per config (and reload), so a session finds its index with one lookup. */
  private byProfile = new WeakMap<EngineProfile, number>();
  /** Event handlers that threw (each is logged once per cause). */
  handlerErrors = 0;
  private readonly loggedCauses = new Set<string>();
  private log: Logger | undefined;
  private readonly onEvents = (batch: EngineEvent[]): void => this.dispatch(batch);

  constructor(engine: Engine = loadEngine()) {
    this.engine = engine;
  }

  /** Starts the engine for its first user, with `threads` engine threads (a later user may ask for more). */
  acquire(log: Logger, threads = 1): void {
    this.log ??= log;
    if (this.users++ === 0) {
      this.engine.start(this.onEvents, threads);
      this.threads = threads;
      for (let i = 0; i < threads; i++) this.started(i);
      return;
    }
    for (; this.threads < threads; this.threads++) {
      this.engine.threadStart(this.threads);
      this.started(this.threads);
    }
  }

  private started(thread: number): void {
    this.startedAt[thread] = performance.now();
    this.restartsOf[thread] ??= 0;
  }

  get threadCount(): number {
    return this.threads;
  }

  /** Stops the engine when its last user is done (every fd it still owns is closed). */
  release(): void {
    if (this.users === 0) return;
    if (--this.users > 0) return;
    this.engine.stop();
    for (const t of this.restartTimers.values()) clearTimeout(t);
    this.restartTimers.clear();
    this.threads = 0;
    this.lost = 0;
    this.restarts = 0;
    this.restartsOf.length = 0;
    this.delayOf.length = 0;
    this.sessions.clear();
    this.listeners.clear();
    this.profiles.clear();
    this.byProfile = new WeakMap();
    this.log = undefined;
  }

  /** Hands a bound, listening fd to engine thread `thread`; returns the listener id for unlisten. */
  listen(fd: number, listener: EngineListener, thread = 0): number {
    const id = this.nextListenerId++;
    this.listeners.set(id, { listener, thread });
    try {
      this.engine.listen(fd, id, thread);
    } catch (e) {
      this.listeners.delete(id);
      throw e;
    }
    return id;
  }

  unlisten(id: number): void {
    if (!this.listeners.delete(id)) return;
    this.engine.unlisten(id);
  }

  attach(eid: number, s: EngineSession): void {
    this.sessions.set(eid, s);
  }

  /** The session needs no more events (it has ended, or gave the connection a final command). */
  detach(eid: number): void {
    this.sessions.delete(eid);
  }

  /** The engine's index for a profile (one per distinct profile, defined on first use). */
  profile(p: EngineProfile): number {
    const known = this.byProfile.get(p);
    if (known !== undefined) return known;
    const key = JSON.stringify(p);
    let idx = this.profiles.get(key);
    if (idx === undefined) {
      idx = this.profiles.size;
      this.engine.defineProfile(idx, p);
      this.profiles.set(key, idx);
    }
    this.byProfile.set(p, idx);
    return idx;
  }

  get liveSessions(): number {
    return this.sessions.size;
  }

  /** The engine threads now, by index (empty before start and after stop). */
  threadRows(): ThreadRow[] {
    if (this.users === 0) return [];
    return this.engine.threadCounts().map((r) => ({
      ...r,
      state: r.running ? ('running' as const) : ('restarting' as const),
      restarts: this.restartsOf[r.thread] ?? 0,
      upMs: performance.now() - (this.startedAt[r.thread] ?? performance.now()),
    }));
  }

  private dispatch(batch: EngineEvent[]): void {
    for (const ev of batch) {
      try {
        this.handle(ev);
      } catch (err) {
        this.handlerFailed(ev, err);
        // The session whose decision threw ends; the others go on.
        const s = ev[0] === EV_ERROR || ev[0] === EV_THREAD ? undefined : this.sessions.get(ev[1]);
        if (s) {
          try {
            s.failed(err);
          } catch (again) {
            this.handlerFailed(ev, again);
            this.sessions.delete(ev[1]);
            this.engine.drop(ev[1]);
          }
        }
      }
    }
  }

  /**
   * An engine thread died: its connections were closed (each session got its GONE or END, cause
   * engine_thread_died) and so were its listeners' fds. Logged with what it lost; started again
   * after a pause, with fresh sockets for its listeners; the other threads keep serving.
   */
  private threadDied(thread: number, syscall: string, code: string, lost: number, held: number, relaying: number): void {
    this.lost += lost;
    const owners = new Set<EngineListener>();
    for (const [id, l] of this.listeners)
      if (l.thread === thread) {
        this.listeners.delete(id);
        owners.add(l.listener);
      }
    const soon = performance.now() - (this.startedAt[thread] ?? 0) < DIED_SOON_MS;
    const delay = soon ? Math.min(RESTART_DELAY_MAX_MS, (this.delayOf[thread] ?? RESTART_DELAY_MS / 2) * 2) : RESTART_DELAY_MS;
    this.delayOf[thread] = delay;
    this.log?.error(
      { thread, syscall, code, lost, held, relaying, restartInMs: delay },
      `engine thread ${thread} died (${syscall} ${code}): ${lost} connection${lost === 1 ? '' : 's'} lost (${held} held, ${relaying} relaying); restarting it, the other threads keep serving`,
    );
    const timer = setTimeout(() => {
      this.restartTimers.delete(thread);
      if (this.users === 0) return;
      try {
        this.engine.threadStart(thread);
      } catch (err) {
        this.log?.error({ err, thread }, `engine thread ${thread} could not be started again: ${(err as Error).message}`);
        return;
      }
      this.restarts++;
      this.restartsOf[thread] = (this.restartsOf[thread] ?? 0) + 1;
      this.started(thread);
      for (const l of owners) {
        try {
          l.restore?.(thread);
        } catch (err) {
          this.log?.error({ err, thread }, `engine thread ${thread}: a listener could not bind again: ${(err as Error).message}`);
        }
      }
      this.log?.info({ thread, restarts: this.restartsOf[thread] }, `engine thread ${thread} is serving again`);
    }, delay);
    timer.unref();
    this.restartTimers.set(thread, timer);
  }

  private handlerFailed(ev: EngineEvent, err: unknown): void {
    this.handlerErrors++;
    const message = err instanceof Error ? err.message : String(err);
    const cause = `${ev[0]}:${message}`;
    if (this.loggedCauses.has(cause) || this.loggedCauses.size >= LOGGED_CAUSES_MAX) return;
    this.loggedCauses.add(cause);
    this.log?.error({ err, event: ev[0], id: ev[1] }, `native engine event handler failed (logged once per cause): ${message}`);
  }

  private handle(ev: EngineEvent): void {
    switch (ev[0]) {
      case EV_ACCEPT: {
        const [, eid, listenerId, family, peerAddress, peerPort, localAddress, localPort] = ev;
        const l = this.listeners.get(listenerId)?.listener;
        if (!l) {
          this.engine.drop(eid);
          return;
        }
        try {
          l.accepted({ eid, family, peerAddress, peerPort, localAddress, localPort });
        } catch (err) {
          // Never leave an accepted connection without a command: it would be held forever.
          this.sessions.delete(eid);
          this.engine.drop(eid);
          throw err;
        }
        return;
      }
      case EV_TALK:
        this.sessions.get(ev[1])?.talkedEarly(ev[2], ev[3], ev[4], ev[5], ev[6]);
        return;
      case EV_GONE:
        this.sessions.get(ev[1])?.gone(ev[2]);
        return;
      case EV_EXPIRED:
        this.sessions.get(ev[1])?.expired(ev[2]);
        return;
      case EV_UPSTREAM_FAILED:
        this.sessions.get(ev[1])?.upstreamFailed(ev[2], ev[3], ev[4]);
        return;
      case EV_GREETING:
        this.sessions.get(ev[1])?.greeted(ev[2], ev[3], ev[4] === 1);
        return;
      case EV_END:
        this.sessions.get(ev[1])?.ended(ev[2], ev[3], ev[4]);
        return;
      case EV_ERROR:
        this.listeners.get(ev[1])?.listener.failed(ev[2], ev[3]);
        return;
      case EV_THREAD:
        this.threadDied(ev[1], ev[2], ev[3], ev[4], ev[5], ev[6]);
        return;
      case EV_PROTOCOL:
        this.sessions.get(ev[1])?.caught(ev[2], ev[3], ev[4] === 1, ev[5], ev[6]);
        return;
    }
  }
}

let shared: EngineDriver | undefined;

/** The process's engine driver (loads the addon on first use; throws if it cannot be loaded). */
export function engineDriver(): EngineDriver {
  shared ??= new EngineDriver();
  return shared;
}
