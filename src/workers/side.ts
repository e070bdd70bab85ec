// An engine worker's end of the link to the main thread: what its App sends (summaries, learnt verdicts, shared lookups, logs) and what it is told (cache, access lists, servers, reload, stop).
//
// Sends are batched: everything a worker has to say within FLUSH_MS goes in one message, so a
// busy worker posts at most 200 messages a second, not one per session.

import fs from 'node:fs';
import type { MessagePort } from 'node:worker_threads';
import pino, { type Logger } from 'pino';
import type { App } from '../app.js';
import { describeError, EtdError } from '../errors.js';
import type { BoundFd } from '../proxy/listener.js';
import type { SessionSummary } from '../proxy/protocol.js';
import { sessionIdSource, viewOfSession } from '../proxy/session.js';
import type { AnswerExchange } from '../reputation/lookup.js';
import type { CacheKind } from '../state/store.js';
import { Board } from './board.js';
import type { FromWorker, ToWorker, WorkerCounters, WorkerInit } from './messages.js';
import { repData } from './repCounters.js';
import { warnGate } from './warnGate.js';

/**
 * A question to the main thread (a shared lookup) that got no answer this long after it was
 * asked is forgotten: Redis answers a miss with nothing, and a session's window is shorter.
 */
const ASK_SWEEP_MS = 10_000;

/**
 * What a worker has to tell the main thread is sent at most this often: one message carries every
 * summary, verdict and count of that time (fewer, larger messages: each costs both threads).
 */
const FLUSH_MS = 5;

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on every Linux etd supports). */
const USER_HZ = 100;

/** This thread's CPU time (user + system, ms), from /proc/thread-self/stat; 0 when unreadable. */
export function threadCpuMs(): number {
  try {
    const stat = fs.readFileSync('/proc/thread-self/stat', 'utf8');
    // Fields after the command (which may hold spaces) start after the last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / USER_HZ;
  } catch {
    return 0;
  }
}

/** The cluster as a worker sees it: lookups go to the main thread's SharedState. */
export interface ClusterLink {
  lookup(key: string, done: (kind: 'pass' | 'deny') => void): void;
}

export class WorkerSide {
  readonly index: number;
  readonly board: Board;
  private slots: Map<string, number>;
  private fdsByListener: Readonly<Record<string, readonly BoundFd[]>>;
  private app: App | undefined;
  private summaries: SessionSummary[] = [];
  private learntQueue: Array<readonly [CacheKind, string]> = [];
  private queries: Array<readonly [string, number, string]> = [];
  private flushing = false;
  private nextAsk = 1;
  /** Questions to the main thread by id; a shared lookup that finds nothing is never answered, so old ones are dropped. */
  private readonly asks = new Map<number, { done: (value: string | null) => void; at: number }>();
  private readonly askSweeper: NodeJS.Timeout;
  /** True while a server state from the main thread is applied (its change must not echo back). */
  private applyingServer = false;
  private cpuMs = 0;
  private readonly cpuTimer: NodeJS.Timeout;
  readonly cluster: ClusterLink | undefined;
  readonly answers: AnswerExchange;

  constructor(
    private readonly port: MessagePort,
    readonly init: WorkerInit,
  ) {
    this.index = init.index;
    this.board = Board.attach(init.board, init.workers);
    this.slots = new Map(init.slots);
    this.fdsByListener = init.fds;
    const board = this.board;
    sessionIdSource(() => board.nextId());
    this.cluster = init.cluster
      ? {
          lookup: (key, done) =>
            this.ask({ t: 'lookup', id: 0, key }, (v) => {
              if (v === 'pass' || v === 'deny') done(v);
            }),
        }
      : undefined;
    this.answers = {
      get: (key, done) =>
        this.ask({ t: 'dnsbl-get', id: 0, key }, (v) => {
          if (v !== null) done(v);
        }),
      put: (key, value, expires) => this.post({ t: 'dnsbl-put', key, value, expires }),
    };
    this.cpuMs = threadCpuMs();
    this.cpuTimer = setInterval(() => (this.cpuMs = threadCpuMs()), 1000).unref();
    this.askSweeper = setInterval(() => this.sweepAsks(), ASK_SWEEP_MS).unref();
    port.on('message', (m: ToWorker) => this.receive(m));
  }

  /** A logger whose lines the main thread writes (with `worker`), at `level`. */
  logger(level: string): Logger {
    return pino(
      { level, base: null, timestamp: false },
      {
        write: (line: string) => {
          try {
            const { level: n, msg, ...obj } = JSON.parse(line) as { level: number; msg?: string } & Record<string, unknown>;
            this.post({ t: 'log', level: n, obj, msg: msg ?? '' });
          } catch {
            /* an unparsable line: nothing a worker can do about it */
          }
        },
      },
    );
  }

  /** The App this side serves (set once it is built; messages before that are not sent). */
  serve(app: App): void {
    this.app = app;
    app.reputation.warnDue = warnGate(this.init.warnings);
    for (const s of app.pool.list()) this.wireServer(s.name);
    app.reputation.onQuery((zone, seconds, status) => {
      this.queries.push([zone, seconds, status]);
      this.schedule();
    });
    app.pool.onChange((c) => {
      if (!this.applyingServer && c.to === 'down') this.post({ t: 'health', name: c.server, healthy: false, reason: c.reason });
    });
  }

  /** The board slot of a server name (assigned by the main thread). */
  slot(name: string): number | undefined {
    return this.slots.get(name);
  }

  fds(listener: string): readonly BoundFd[] | undefined {
    return this.fdsByListener[listener];
  }

  /**
   * A session is ending: its summary is owed to the main thread. Counted before the board's session count drops,
   * so the main thread's `sessions.size` (sessions + owed summaries) never reads 0 while a summary is on its way.
   */
  ending(): void {
    this.board.reported(this.index, 1);
  }

  /** The summary owed since `ending()`. */
  summary(s: SessionSummary): void {
    this.summaries.push(s);
    this.schedule();
  }

  learnt(kind: CacheKind, address: string): void {
    this.learntQueue.push([kind, address]);
    this.schedule();
  }

  ready(): void {
    this.post({ t: 'ready' });
  }

  failed(e: unknown): void {
    const err = e instanceof EtdError ? e : undefined;
    const message = e instanceof Error ? e.message : String(e);
    // An EtdError's message ends with its hint; the main thread's EtdError adds it again.
    const bare = err?.hint && message.endsWith(` — ${err.hint}`) ? message.slice(0, -(err.hint.length + 3)) : message;
    this.post({ t: 'failed', message: bare, code: err?.code, hint: err?.hint });
  }

  /** Counts this worker's server sessions on the board (each Server of its pool, after a reload too). */
  private wireServer(name: string): void {
    const server = this.app?.pool.get(name);
    const slot = this.slots.get(name);
    if (!server || slot === undefined) return;
    const board = this.board;
    const worker = this.index;
    server.mirror = (delta) => board.serverActive(worker, slot, delta);
    // leastconn weighs every worker's sessions, not only this one's.
    server.source = () => board.server(slot);
  }

  private counters(): WorkerCounters {
    const app = this.app!;
    const st = app.stats;
    return {
      accepted: st.accepted,
      relayed: st.relayed,
      limits: { ...st.limits },
      engine: app.engineCounts(),
      cpuMs: this.cpuMs,
      reputation: app.reputation.enabled ? repData(app.reputation.counters) : undefined,
    };
  }

  private schedule(): void {
    if (this.flushing) return;
    this.flushing = true;
    setTimeout(() => this.flush(), FLUSH_MS);
  }

  private flush(): void {
    this.flushing = false;
    if (!this.app) return;
    const summaries = this.summaries;
    const learnt = this.learntQueue;
    const queries = this.queries;
    this.summaries = [];
    this.learntQueue = [];
    this.queries = [];
    this.post({ t: 'batch', summaries, learnt, counters: this.counters(), queries });
  }

  private post(m: FromWorker): void {
    this.port.postMessage(m);
  }

  private ask(m: Extract<FromWorker, { t: 'lookup' | 'dnsbl-get' }>, done: (value: string | null) => void): void {
    const id = this.nextAsk++;
    this.asks.set(id, { done, at: performance.now() });
    this.post({ ...m, id });
  }

  private sweepAsks(): void {
    const old = performance.now() - ASK_SWEEP_MS;
    for (const [id, a] of this.asks) {
      if (a.at >= old) break; // ids grow with time: the rest are newer
      this.asks.delete(id);
    }
  }

  private receive(m: ToWorker): void {
    const app = this.app;
    if (!app) return;
    switch (m.t) {
      case 'cache':
        for (const [key, kind, expires] of m.changes) {
          if (kind === null) app.cache.delete(key);
          else app.cache.adopt(key, kind, expires);
        }
        return;
      case 'access':
        app.access.replaceRuntime(m.entries);
        return;
      case 'server': {
        const s = app.pool.get(m.state.name);
        if (!s) return;
        this.applyingServer = true;
        try {
          if (s.admin !== m.state.admin) app.pool.setAdmin(s, m.state.admin, m.state.reason);
          if (s.healthy !== m.state.healthy) app.pool.setHealth(s, m.state.healthy, m.state.reason);
        } finally {
          this.applyingServer = false;
        }
        return;
      }
      case 'dnsbl':
        for (const [key, value] of m.answers) app.reputation.adopt(key, value);
        return;
      case 'answer': {
        const ask = this.asks.get(m.id);
        this.asks.delete(m.id);
        ask?.done(m.value);
        return;
      }
      case 'sessions':
        this.post({ t: 'sessions', id: m.id, list: [...app.sessions].map(viewOfSession) });
        return;
      case 'counters':
        this.cpuMs = threadCpuMs();
        this.post({ t: 'counters', id: m.id, counters: this.counters() });
        return;
      case 'reload':
        this.slots = new Map(m.slots);
        this.fdsByListener = m.fds;
        app.reload(m.config).then(
          () => {
            for (const s of app.pool.list()) this.wireServer(s.name);
            this.post({ t: 'reloaded', id: m.id, error: undefined });
          },
          (e: unknown) => this.post({ t: 'reloaded', id: m.id, error: describeError(e) }),
        );
        return;
      case 'stop':
        app.stop(m.graceMs).then(
          () => {
            this.flush();
            clearInterval(this.cpuTimer);
            clearInterval(this.askSweeper);
            this.post({ t: 'stopped' });
          },
          () => this.post({ t: 'stopped' }),
        );
        return;
    }
  }
}
