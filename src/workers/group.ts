// The main thread's engine workers: starts them with their sockets and state, routes what they say to the owning App, restarts one that dies, reloads and stops them all.
// biome-ignore-all lint/style/noExcessiveLinesPerFile: the worker-thread plumbing issue 23 deletes (engine threads replace it)
//
// One owner for the state (docs/workers.md): the main thread's App keeps the store, the caches,
// the access lists, the health checks and the cluster; the workers keep copies it updates
// (batched per event-loop turn) and count the limits on the shared board (board.ts).

import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Pool } from '../backend/pool.js';
import type { SharedState } from '../cluster/shared.js';
import type { Config } from '../config/schema.js';
import { type ErrorCode, EtdError } from '../errors.js';
import type { AccessLists } from '../policy/access.js';
import type { ClientCache } from '../policy/clientCache.js';
import type { BoundFd } from '../proxy/listener.js';
import type { EngineCounts, LiveSessionView, SessionSummary } from '../proxy/protocol.js';
import type { AnswerExchange, Reputation } from '../reputation/lookup.js';
import type { CacheKind } from '../state/store.js';
import type { Stats } from '../stats.js';
import { type Board, SERVER_SLOTS } from './board.js';
import type { FromWorker, ServerStateMsg, ToWorker, WorkerCounters, WorkerInit } from './messages.js';
import { type RepCountersData, repData, sumCounters } from './repCounters.js';
import { warnGate, warnGateBuffer } from './warnGate.js';

/** Two data sets as one (a retired worker's counters added to those retired before). */
function sumCountersData(prev: readonly RepCountersData[], next: RepCountersData): RepCountersData {
  const empty = sumCounters(
    {
      queries: new Map(),
      hits: new Map(),
      timeouts: new Map(),
      errors: new Map(),
      refused: new Map(),
      overflow: 0,
      scored: 0,
      refusedClients: 0,
      allowlistedClients: 0,
      fromPeers: 0,
    },
    [...prev, next],
  );
  return repData(empty);
}

/** What the workers need from the main thread's App. */
export interface Owner {
  /** A session ended in a worker: its summary line, stats and observers. */
  ended(summary: SessionSummary): void;
  /** A worker recorded a verdict: the main thread records it for every worker and the cluster. */
  learnt(kind: CacheKind, address: string): void;
  readonly cache: ClientCache;
  readonly access: AccessLists;
  readonly pool: Pool;
  cluster(): SharedState | undefined;
  readonly reputation: Reputation;
  /** Binds a restarted worker's sockets (each listener on its resolved port). */
  rebind(worker: number): Record<string, BoundFd[]>;
}

/** One worker as /v1/status shows it. */
export interface WorkerStatus {
  readonly index: number;
  readonly threadId: number | null;
  readonly state: 'starting' | 'running' | 'restarting' | 'stopping';
  readonly sessions: number;
  readonly held: number;
  readonly relaying: number;
  readonly accepted: number;
  /** CPU time of the thread since it started (ms), and its share of one core since then (%). */
  readonly cpuMs: number;
  readonly cpuPercent: number;
  readonly restarts: number;
}

type EngineTotals = EngineCounts & { handlerErrors: number };

interface Thread {
  worker: Worker;
  /** Settles when the worker serves (or could not start). */
  ready: Promise<void>;
  state: WorkerStatus['state'];
  counters: WorkerCounters | undefined;
  startedAt: number;
  restarts: number;
}

/** The worker's script: next to this file when built; from dist/ when the sources run (tests). */
function threadScript(): URL {
  const here = new URL(import.meta.url);
  return here.pathname.endsWith('.ts') ? new URL('../../dist/src/workers/thread.js', here) : new URL('./thread.js', here);
}

/** How often every worker is asked for its counters (CPU time, engine counts) when it has nothing else to say. */
const COUNTERS_EVERY_MS = 1000;

export class WorkerGroup {
  private readonly threads: Array<Thread | undefined> = [];
  private readonly slots = new Map<string, number>();
  /** Counters of workers that died or were restarted, so the sums never go back. */
  private retired = { accepted: 0, relayed: 0, limits: { max_connections: 0, max_held: 0, per_client: 0 } };
  private retiredReputation: RepCountersData[] = [];
  /** Connections lost with workers that died. */
  lost = 0;
  restarts = 0;
  private stopping = false;
  private nextQuery = 1;
  private readonly queries = new Map<number, (m: FromWorker) => void>();
  private cacheQueue: Array<readonly [string, CacheKind | null, number]> = [];
  private accessDirty = false;
  private flushQueued = false;
  private flushTimer: NodeJS.Immediate | undefined;
  private readonly exchange: AnswerExchange;
  private readonly warnings = warnGateBuffer();
  private dnsblQueue: Array<readonly [string, string]> = [];
  private dnsblFrom: number[] = [];
  private readonly countersTimer: NodeJS.Timeout;

  constructor(
    private config: Config,
    readonly board: Board,
    private readonly log: Logger,
    private readonly owner: Owner,
  ) {
    this.assignSlots(config);
    // Verdicts learnt under load are batched; an operator's change (an access entry, a cache
    // entry deleted through the API) goes out at once, so the next connection already sees it.
    owner.cache.onChange = (key, kind, expires) => {
      this.cacheQueue.push([key, kind ?? null, expires]);
      if (kind === undefined) this.flushNow();
      else this.queueFlush();
    };
    owner.access.onChange = () => {
      this.accessDirty = true;
      this.flushNow();
    };
    owner.pool.onChange((c) => {
      const s = owner.pool.get(c.server);
      if (s) this.broadcast({ t: 'server', state: serverState(s) });
    });
    // DNSBL answers: a worker's answer goes to every other worker (and to the cluster, when there
    // is one), so a returning client is decided from the cache whichever worker takes it. Lookups
    // of other gateways' answers go to the cluster.
    this.exchange = {
      get: (key, done) => this.owner.cluster()?.get('dnsbl', key, done),
      put: (key, value, expires) => this.owner.cluster()?.put('dnsbl', key, value, expires),
    };
    if (owner.reputation.enabled) {
      // The main thread's own lookups (GET /v1/reputation) are shared with the workers too.
      owner.reputation.share({ get: this.exchange.get, put: (key, value, expires) => this.shareAnswer(-1, key, value, expires) });
      owner.reputation.warnDue = warnGate(this.warnings);
    }
    this.countersTimer = setInterval(() => this.broadcast({ t: 'counters', id: 0 }), COUNTERS_EVERY_MS).unref();
  }

  get size(): number {
    return this.config.workers;
  }

  /** Makes `stats`' live gauges and counters the sums over the workers (the summaries feed the rest). */
  countInto(stats: Stats): void {
    const sum = (f: (c: WorkerCounters) => number) => this.threads.reduce((n, t) => n + (t?.counters ? f(t.counters) : 0), 0);
    const limits = {} as Stats['limits'];
    for (const k of ['max_connections', 'max_held', 'per_client'] as const) {
      Object.defineProperty(limits, k, { enumerable: true, get: () => this.retired.limits[k] + sum((c) => c.limits[k]) });
    }
    // The DNSBL counters: the main thread's own lookups (the API's) plus every worker's.
    const rep = this.owner.reputation;
    const own = rep.counters;
    Object.defineProperty(rep, 'counters', {
      get: () =>
        sumCounters(own, [
          ...this.retiredReputation,
          ...this.threads.flatMap((t) => (t?.counters?.reputation ? [t.counters.reputation] : [])),
        ]),
    });
    Object.defineProperties(stats, {
      held: { get: () => this.board.held },
      relaying: { get: () => this.board.relaying },
      accepted: { get: () => this.retired.accepted + sum((c) => c.accepted) },
      relayed: { get: () => this.retired.relayed + sum((c) => c.relayed) },
      limits: { get: () => limits },
    });
  }

  /** Starts every worker with its sockets; resolves when all are serving (or rejects, all stopped). */
  async start(fds: (worker: number) => Record<string, readonly BoundFd[]>): Promise<void> {
    const started = Array.from({ length: this.size }, (_, i) => this.spawn(i, fds(i)));
    const results = await Promise.allSettled(started);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      await this.stop(0);
      throw (failed as PromiseRejectedResult).reason;
    }
  }

  private spawn(index: number, fds: Record<string, readonly BoundFd[]>, restarts = 0): Promise<void> {
    const init: WorkerInit = {
      index,
      workers: this.size,
      board: this.board.buffer,
      warnings: this.warnings,
      config: this.config,
      slots: [...this.slots],
      fds,
      cache: [...this.owner.cache.entries()].map((e) => [e.key, e.kind, e.expires] as const),
      access: this.owner.access.runtimeEntries(),
      servers: this.owner.pool.list().map(serverState),
      cluster: this.owner.cluster() !== undefined,
    };
    const worker = new Worker(threadScript(), { workerData: init, stdout: false, stderr: false });
    const thread: Thread = {
      worker,
      ready: Promise.resolve(),
      state: 'starting',
      counters: undefined,
      startedAt: performance.now(),
      restarts,
    };
    this.threads[index] = thread;
    thread.ready = new Promise<void>((resolve, reject) => {
      let settled = false;
      worker.on('message', (m: FromWorker) => {
        if (m.t === 'ready' && !settled) {
          settled = true;
          thread.state = 'running';
          resolve();
          return;
        }
        if (m.t === 'failed' && !settled) {
          settled = true;
          reject(
            new EtdError(
              (m.code as ErrorCode | undefined) ?? 'ETD_ERR_WORKER',
              `engine worker ${index}: ${m.message}`,
              m.hint ? { hint: m.hint } : {},
            ),
          );
          return;
        }
        this.receive(index, m);
      });
      worker.on('error', (err) =>
        this.log.error({ worker: index, err: { message: err.message, stack: err.stack } }, `engine worker ${index} failed: ${err.message}`),
      );
      worker.on('exit', (code) => {
        if (!settled) {
          settled = true;
          reject(new EtdError('ETD_ERR_WORKER', `engine worker ${index} exited (code ${code}) before it was ready`));
        }
        this.exited(index, thread, code);
      });
    });
    return thread.ready;
  }

  /**
   * Sends `m` (made with a query id) to one worker; resolves with its answer, or undefined when
   * the worker exits first or `timeoutMs` passes (a worker that died never answers).
   */
  private query(t: Thread, make: (id: number) => ToWorker, timeoutMs: number): Promise<FromWorker | undefined> {
    return new Promise((resolve) => {
      const id = this.nextQuery++;
      const done = (m: FromWorker | undefined): void => {
        clearTimeout(timer);
        this.queries.delete(id);
        t.worker.off('exit', onExit);
        resolve(m);
      };
      const onExit = (): void => done(undefined);
      const timer = setTimeout(() => done(undefined), timeoutMs);
      this.queries.set(id, done);
      t.worker.once('exit', onExit);
      t.worker.postMessage(make(id));
    });
  }

  /** A worker exited: unless etd stops, its sessions are counted lost and it is started again. */
  private exited(index: number, thread: Thread, code: number): void {
    if (this.threads[index] !== thread) return;
    const had = this.board.clearWorker(index);
    this.retire(thread);
    if (this.stopping || thread.state === 'stopping') {
      this.threads[index] = undefined;
      return;
    }
    this.lost += had.sessions;
    this.restarts++;
    thread.state = 'restarting';
    const quick = performance.now() - thread.startedAt < 10_000;
    const delay = quick ? Math.min(5000, 100 * 2 ** Math.min(thread.restarts, 6)) : 100;
    this.log.error(
      { worker: index, exitCode: code, lost: had.sessions, held: had.held, relaying: had.relaying, restartInMs: delay },
      `engine worker ${index} died (exit code ${code}): ${had.sessions} connections lost (${had.held} held, ${had.relaying} relaying); restarting it, the other workers keep serving`,
    );
    setTimeout(() => this.restart(index, thread.restarts + 1, delay), delay).unref();
  }

  private restart(index: number, restarts: number, lastDelay: number): void {
    if (this.stopping) return;
    let fds: Record<string, BoundFd[]>;
    try {
      fds = this.owner.rebind(index);
    } catch (e) {
      this.log.error({ worker: index, err: (e as Error).message }, `engine worker ${index}: cannot bind its sockets again; retrying`);
      setTimeout(() => this.restart(index, restarts, lastDelay), Math.min(5000, lastDelay * 2)).unref();
      return;
    }
    this.spawn(index, fds, restarts).then(
      () => this.log.warn({ worker: index, restarts }, `engine worker ${index} restarted`),
      (e: unknown) => this.log.error({ worker: index, err: (e as Error).message }, `engine worker ${index} could not be restarted`),
    );
  }

  private retire(thread: Thread): void {
    const c = thread.counters;
    thread.counters = undefined;
    if (!c) return;
    if (c.reputation) this.retiredReputation = [sumCountersData(this.retiredReputation, c.reputation)];
    this.retired.accepted += c.accepted;
    this.retired.relayed += c.relayed;
    for (const k of ['max_connections', 'max_held', 'per_client'] as const) this.retired.limits[k] += c.limits[k];
  }

  private receive(index: number, m: FromWorker): void {
    const thread = this.threads[index];
    switch (m.t) {
      case 'batch':
        if (thread) thread.counters = m.counters;
        for (const [kind, address] of m.learnt) this.owner.learnt(kind, address);
        for (const [zone, seconds, status] of m.queries) this.owner.reputation.observed(zone, seconds, status as never);
        for (const s of m.summaries) this.owner.ended(s);
        if (m.summaries.length > 0 && thread?.state !== 'restarting') this.board.reported(index, -m.summaries.length);
        return;
      case 'log': {
        const obj = { ...m.obj, worker: index };
        if (m.level >= 50) this.log.error(obj, m.msg);
        else if (m.level >= 40) this.log.warn(obj, m.msg);
        else if (m.level >= 30) this.log.info(obj, m.msg);
        else this.log.debug(obj, m.msg);
        return;
      }
      case 'health': {
        const s = this.owner.pool.get(m.name);
        if (s && s.healthy !== m.healthy) this.owner.pool.setHealth(s, m.healthy, m.reason);
        else if (s) thread?.worker.postMessage({ t: 'server', state: serverState(s) } satisfies ToWorker);
        return;
      }
      case 'lookup': {
        const cluster = this.owner.cluster();
        if (!cluster) {
          this.answer(index, m.id, null);
          return;
        }
        cluster.lookup(m.key, (kind) => this.answer(index, m.id, kind));
        return;
      }
      case 'dnsbl-get':
        this.exchange.get(m.key, (value) => this.answer(index, m.id, value));
        return;
      case 'dnsbl-put':
        this.owner.reputation.adopt(m.key, m.value);
        this.shareAnswer(index, m.key, m.value, m.expires);
        return;
      case 'counters':
        if (thread) thread.counters = m.counters;
        this.queries.get(m.id)?.(m);
        return;
      case 'sessions':
      case 'reloaded':
      case 'stopped':
        if ('id' in m) this.queries.get(m.id)?.(m);
        else this.queries.get(-index - 1)?.(m);
        return;
    }
  }

  /** An answer worker `from` got (-1: the main thread): to the cluster and to every other worker, batched. */
  private shareAnswer(from: number, key: string, value: string, expires: number): void {
    this.exchange.put(key, value, expires);
    this.dnsblQueue.push([key, value]);
    this.dnsblFrom.push(from);
    this.queueFlush();
  }

  private answer(index: number, id: number, value: string | null): void {
    this.threads[index]?.worker.postMessage({ t: 'answer', id, value } satisfies ToWorker);
  }

  private broadcast(m: ToWorker): void {
    for (const t of this.threads) if (t && t.state !== 'restarting') t.worker.postMessage(m);
  }

  private queueFlush(): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    // One post per worker per event-loop turn: the workers' batches (side.ts, every few ms) come in
    // whole, so a turn carries all they learnt; a pass reaches the other workers within a turn.
    this.flushTimer = setImmediate(() => this.flushNow());
  }

  private flushNow(): void {
    if (this.flushTimer) clearImmediate(this.flushTimer);
    this.flushTimer = undefined;
    this.flushQueued = false;
    if (this.cacheQueue.length > 0) {
      const changes = this.cacheQueue;
      this.cacheQueue = [];
      this.broadcast({ t: 'cache', changes });
    }
    if (this.dnsblQueue.length > 0) {
      const answers = this.dnsblQueue;
      const from = this.dnsblFrom;
      this.dnsblQueue = [];
      this.dnsblFrom = [];
      this.threads.forEach((t, i) => {
        if (!t || t.state === 'restarting') return;
        const theirs = answers.filter((_, j) => from[j] !== i);
        if (theirs.length > 0) t.worker.postMessage({ t: 'dnsbl', answers: theirs } satisfies ToWorker);
      });
    }
    if (this.accessDirty) {
      this.accessDirty = false;
      this.broadcast({ t: 'access', entries: this.owner.access.runtimeEntries() });
    }
  }

  /** Asks every running worker; resolves with their answers (a worker that dies meanwhile answers nothing). */
  private ask<R extends FromWorker>(make: (id: number) => ToWorker, timeoutMs = 5000): Promise<R[]> {
    const live = this.threads.filter((t): t is Thread => t !== undefined && t.state === 'running');
    return Promise.all(live.map((t) => this.query(t, make, timeoutMs))).then((all) => all.filter((r) => r !== undefined) as R[]);
  }

  /** Every worker's live sessions, oldest first. */
  async sessions(): Promise<LiveSessionView[]> {
    const answers = await this.ask<Extract<FromWorker, { t: 'sessions' }>>((id) => ({ t: 'sessions', id }));
    return answers.flatMap((a) => a.list).sort((a, b) => a.id - b.id);
  }

  /** Fresh counters from every worker (the API's status and metrics call this first). */
  async refresh(): Promise<void> {
    await this.ask((id) => ({ t: 'counters', id }), 1000);
  }

  /** The workers' engines, summed; null when none runs. */
  engineCounts(): EngineTotals | null {
    let out: EngineTotals | null = null;
    for (const t of this.threads) {
      const e = t?.counters?.engine;
      if (!e) continue;
      if (!out) out = { ...e };
      else
        for (const k of Object.keys(e) as Array<keyof EngineTotals>)
          (out as unknown as Record<string, number>)[k] = (out[k] as number) + (e[k] as number);
    }
    return out;
  }

  status(): WorkerStatus[] {
    return Array.from({ length: this.size }, (_, index) => {
      const t = this.threads[index];
      const row = this.board.row(index);
      const cpuMs = t?.counters?.cpuMs ?? 0;
      const upMs = t ? performance.now() - t.startedAt : 0;
      return {
        index,
        threadId: t && t.state !== 'restarting' ? t.worker.threadId : null,
        state: t?.state ?? 'restarting',
        sessions: row.sessions,
        held: row.held,
        relaying: row.relaying,
        // Nothing counts accepts on the board (Board.accepted is never called): the worker's own counter, since it started.
        accepted: t?.counters?.accepted ?? 0,
        cpuMs: Math.round(cpuMs),
        cpuPercent: upMs > 0 ? Math.round((cpuMs / upMs) * 1000) / 10 : 0,
        restarts: t?.restarts ?? 0,
      };
    });
  }

  /**
   * Applies a new config in every worker, with the sockets bound for its new or changed listeners.
   * A worker that fails to apply it is restarted with it, so all workers run the same config.
   */
  async reload(next: Config, fds: (worker: number) => Record<string, readonly BoundFd[]>): Promise<void> {
    this.config = next;
    this.assignSlots(next);
    const slots = [...this.slots];
    const results = await Promise.all(
      this.threads.map(async (t, i) => {
        const given = fds(i);
        const drop = (): undefined => {
          // It starts again with the new config and fresh sockets (rebind), or it is stopping.
          for (const list of Object.values(given)) for (const f of list) closeQuietly(f.fd);
          return undefined;
        };
        if (!t || (t.state !== 'running' && t.state !== 'starting')) return drop();
        // A worker being (re)started took the config of its start: it gets this one once it serves.
        if (
          t.state === 'starting' &&
          !(await t.ready.then(
            () => true,
            () => false,
          ))
        )
          return drop();
        if (this.threads[i] !== t || t.state !== 'running') return drop();
        const answer = (await this.query(t, (id) => ({ t: 'reload', id, config: next, fds: given, slots }), 60_000)) as
          | Extract<FromWorker, { t: 'reloaded' }>
          | undefined;
        // No answer: it died meanwhile and is restarted with the new config.
        return answer?.error === undefined ? undefined : { index: i, error: answer.error };
      }),
    );
    for (const r of results) {
      if (!r) continue;
      this.log.error(
        { worker: r.index, err: r.error },
        `engine worker ${r.index} could not apply the reload; restarting it with the new configuration`,
      );
      void this.threads[r.index]?.worker.terminate();
    }
  }

  /** Drains every worker (421 to held clients, relayed sessions within `graceMs`), then ends them. */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    clearInterval(this.countersTimer);
    if (this.flushTimer) clearImmediate(this.flushTimer);
    await Promise.all(
      this.threads.map(async (t, i) => {
        if (!t) return;
        if (t.state === 'running') {
          t.state = 'stopping';
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, graceMs + 5000);
            this.queries.set(-i - 1, () => {
              clearTimeout(timer);
              resolve();
            });
            t.worker.postMessage({ t: 'stop', graceMs } satisfies ToWorker);
          });
          this.queries.delete(-i - 1);
        }
        t.state = 'stopping';
        await t.worker.terminate();
      }),
    );
  }

  /** Ends worker `index` as a crash would (tests and `etd` fault drills): it is restarted. */
  kill(index: number): Promise<number> {
    const t = this.threads[index];
    if (!t) return Promise.resolve(0);
    return t.worker.terminate();
  }

  /** After a reload changed the main thread's pool: its servers read their counts from the board. */
  linkServers(): void {
    for (const s of this.owner.pool.list()) {
      const slot = this.slots.get(s.name);
      if (slot !== undefined) s.source = () => this.board.server(slot);
    }
  }

  private assignSlots(config: Config): void {
    for (const s of config.upstream.servers) {
      if (this.slots.has(s.name)) continue;
      if (this.slots.size >= SERVER_SLOTS) continue; // counted per worker only (a thousand renames into a run)
      this.slots.set(s.name, this.slots.size);
    }
    this.linkServers();
  }
}

function serverState(s: { name: string; healthy: boolean; admin: 'drain' | 'maint' | undefined; lastReason: string }): ServerStateMsg {
  return { name: s.name, healthy: s.healthy, admin: s.admin, reason: s.lastReason };
}

function closeQuietly(fd: number): void {
  void import('../native/transparent.js').then((t) => {
    try {
      t.loadTransparent().closeFd(fd);
    } catch {
      /* already closed */
    }
  });
}
