// Composition root: builds etd's parts from one Config with explicit dependencies; start, reload, stop in order.
//
// One App, on the one JavaScript thread, makes every decision (docs/workers.md); the native
// engine's threads (config `workers`) own the sockets and do the I/O. Admission is in
// proxy/admission.ts and proxy/intake.ts, the session's decisions in proxy/session.ts.

import type { Logger } from 'pino';
import { HealthChecker } from './backend/health.js';
import { Pool } from './backend/pool.js';
import { localState } from './cluster/attach.js';
import type { SharedState } from './cluster/shared.js';
import type { Config, ListenerConfig } from './config/schema.js';
import { EtdError } from './errors.js';
import { AccessLists } from './policy/access.js';
import { ClientCache } from './policy/clientCache.js';
import { type ConnRate, connRateFor } from './policy/connRate.js';
import { type EngineDriver, engineDriver, type ThreadRow } from './proxy/engineDriver.js';
import { Intake } from './proxy/intake.js';
import { Listener } from './proxy/listener.js';
import { ListenerSet } from './proxy/listenerSet.js';
import { policyOf } from './proxy/policy.js';
import type { EngineCounts, LiveSession, LiveSessionView, SessionSummary } from './proxy/protocol.js';
import { viewOfSession } from './proxy/session.js';
import { type ListenerContext, SessionBook } from './proxy/sessionBook.js';
import { createSource } from './proxy/upstream.js';
import { Reputation } from './reputation/lookup.js';
import { openStore, type StateStore } from './state/store.js';
import { Stats } from './stats.js';

/** What decides the netfilter setup, which is applied at start: only a restart changes it. */
function netfilterKey(c: Config): string {
  const modes = [...new Set(c.listeners.map((l) => l.mode).filter((m) => m !== 'plain'))].sort();
  const intercepted = c.listeners.filter((l) => l.mode === 'intercept').map((l) => [l.port, [...l.destinations].sort()]);
  return JSON.stringify([c.netfilter, modes, intercepted]);
}

/** A listener as the API shows it: its config and the addresses it is bound to. */
export interface ListenerView {
  readonly config: ListenerConfig;
  addresses(): Array<{ address: string; port: number }>;
}

/** Hooks for parts that observe sessions (API event ring, metrics); all optional. */
export interface AppObserver {
  sessionEnded?(summary: SessionSummary): void;
}

export class App {
  readonly stats = new Stats();
  readonly pool: Pool;
  /** Active SMTP checks of the pool's servers (rise/fall); `health.status(name)` for the API. */
  readonly health: HealthChecker;
  /** The live sessions, every engine thread's. */
  readonly sessions: Set<LiveSession>;
  private readonly listeners: ListenerSet;
  private stopping = false;
  private readonly book: SessionBook;
  private readonly observers: AppObserver[] = [];
  /** SQLite (or, when that fails, memory) behind the caches and runtime access entries. */
  readonly store: StateStore;
  readonly access: AccessLists;
  readonly cache: ClientCache;
  /** DNSBL/DNSWL lookups and their cache (reputation:); inert without lists. */
  readonly reputation: Reputation;
  /** Shared state over Redis (cluster.redis), from start; undefined when this gateway is on its own. */
  cluster: SharedState | undefined;
  /** The native session engine, from start to stop. */
  private engine: EngineDriver | undefined;
  private readonly intake: Intake;
  /** limits.rate: connections per client and interval (undefined = off); a reload keeps its counts. */
  private rate: ConnRate | undefined;

  constructor(
    private config: Config,
    readonly log: Logger,
  ) {
    this.store = openStore(config.state.path, log);
    this.access = new AccessLists(config.access, this.store.loadAccess());
    this.cache = new ClientCache(config.cache, this.store);
    this.rate = connRateFor(undefined, config.limits.rate);
    this.reputation = new Reputation(config.reputation, log.child({ part: 'reputation' }));
    this.pool = new Pool(config.upstream.servers, config.upstream.balance, { passiveFall: config.upstream.passiveFall });
    this.pool.onChange((c) =>
      this.log.warn({ server: c.server, from: c.from, to: c.to, reason: c.reason }, `server ${c.server} is now ${c.to}`),
    );
    this.health = new HealthChecker(this.pool, config.upstream.health, log);
    this.book = new SessionBook({
      stats: this.stats,
      cache: this.cache,
      pool: this.pool,
      log,
      config: () => this.config,
      cluster: () => this.cluster,
      recordEnd: (summary) => this.recordEnd(summary),
    });
    this.sessions = this.book.sessions;
    this.intake = new Intake({
      config: () => this.config,
      stats: this.stats,
      counts: this.book.counts,
      access: this.access,
      cache: this.cache,
      reputation: this.reputation,
      rate: () => this.rate,
      cluster: () => this.cluster,
      engine: () => this.engine!,
      stopping: () => this.stopping,
      recordEnd: (summary) => this.recordEnd(summary),
    });
    this.listeners = new ListenerSet(
      (l, c) =>
        new Listener(
          l,
          this.book.context(l, c),
          this.engine!,
          (conn, ctx) => this.intake.accept(conn, ctx),
          c.netfilter.tproxyPort,
          c.workers,
        ),
      log,
    );
  }

  /** True while the held connections are above detection.stress.above (until below .below). */
  get stressed(): boolean {
    return this.book.counts.stressed;
  }

  get stressChanges(): number {
    return this.book.counts.stressChanges;
  }

  /** The live sessions as the API lists them, oldest first. */
  async liveSessions(): Promise<LiveSessionView[]> {
    return [...this.sessions].map(viewOfSession);
  }

  get currentConfig(): Config {
    return this.config;
  }

  /** Adds an observer of session ends; returns the function that removes it. */
  observe(o: AppObserver): () => void {
    this.observers.push(o);
    return () => {
      const i = this.observers.indexOf(o);
      if (i >= 0) this.observers.splice(i, 1);
    };
  }

  /** What the native engine owns now (summed over its threads), or null when it is not running (before start, after stop). */
  engineCounts(): (EngineCounts & { handlerErrors: number }) | null {
    if (!this.engine) return null;
    return { ...this.engine.engine.counts(), handlerErrors: this.engine.handlerErrors };
  }

  /** The engine threads, by index (empty when not running), and the connections lost with threads that died. */
  threads(): { rows: ThreadRow[]; lost: number; restarts: number } {
    const e = this.engine;
    return e
      ? { rows: e.threadRows().slice(0, this.config.workers), lost: e.lost, restarts: e.restarts }
      : { rows: [], lost: 0, restarts: 0 };
  }

  listenerList(): readonly ListenerView[] {
    return this.listeners.list();
  }

  async start(): Promise<void> {
    const t0 = performance.now();
    const loaded = this.cache.load();
    this.log.info({ entries: loaded, ms: Math.round(performance.now() - t0), store: this.store.location }, 'client cache loaded');
    this.cache.startSweeping();
    if (this.config.cluster) {
      // Loaded only when configured: ioredis costs ~35 ms of start-up to every other etd.
      const { SharedState } = await import('./cluster/shared.js');
      this.cluster = new SharedState(this.config.cluster, localState(this.cache, this.access, this.store, this.log), this.log);
      this.cluster.start();
      // DNSBL answers are shared too: a peer's answer can settle a zone before the resolver does.
      const cluster = this.cluster;
      this.reputation.share({
        get: (key, done) => cluster.get('dnsbl', key, done),
        put: (key, value, expires) => cluster.put('dnsbl', key, value, expires),
      });
    }
    const driver = engineDriver();
    driver.acquire(this.log, this.config.workers);
    this.engine = driver;
    await this.listeners.start(this.config);
    this.health.start();
  }

  /** The summary line goes to the root logger: it carries `listener` itself (a child logger's binding would repeat the key). */
  private recordEnd(summary: SessionSummary): void {
    this.stats.ended(summary);
    this.log.info(summary, 'session');
    for (const o of this.observers) o.sessionEnded?.(summary);
  }

  /**
   * Applies a new, already validated config. Held and relayed sessions keep the policy they
   * started with; new connections get the new one. Listeners are added, removed or rebound.
   */
  async reload(next: Config): Promise<void> {
    const prev = this.config;
    if (netfilterKey(next) !== netfilterKey(prev)) {
      throw new EtdError(
        'ETD_ERR_CONFIG_INVALID',
        'reload refused: the netfilter section, the transparent modes or the intercepted ports/destinations changed',
        { hint: 'these are applied at start; restart etd (systemctl restart etd) to change them' },
      );
    }
    // The thread count is fixed at start: the config every part keeps says so.
    if (next.workers !== prev.workers) {
      this.log.warn({ from: prev.workers, to: next.workers }, 'workers changes take effect at the next restart');
      next = { ...next, workers: prev.workers, workersSetting: prev.workersSetting };
    }
    await this.listeners.reload(next, prev);
    this.config = next;
    this.pool.update(next.upstream.servers, next.upstream.balance);
    this.access.replaceConfig(next.access);
    this.cache.update(next.cache);
    this.rate = connRateFor(this.rate, next.limits.rate);
    this.reputation.update(next.reputation);
    this.health.update(next.upstream.health);
    // Applied at start only (the cluster's settings may carry a password: not logged).
    if (JSON.stringify(next.cluster) !== JSON.stringify(prev.cluster)) this.log.warn({}, 'cluster changes take effect at the next restart');
    for (const [what, from, to] of [
      ['state.path', prev.state.path, next.state.path],
      ['user', prev.user, next.user],
    ] as const)
      if (from !== to) this.log.warn({ from, to }, `${what} changes take effect at the next restart`);
    for (const listener of this.listeners.list()) {
      const ctx = listener.ctx as ListenerContext;
      ctx.normal = policyOf(next);
      ctx.stress = policyOf(next, true);
      if (prev.upstream.source !== next.upstream.source) ctx.source = createSource(next.upstream.source);
    }
  }

  /** Stops accepting, sends 421 to held clients, lets relayed sessions finish within the grace time. */
  async stop(graceMs = this.config.timeouts.shutdownGraceMs): Promise<void> {
    this.stopping = true;
    this.health.stop();
    await this.listeners.stop();
    for (const s of [...this.sessions]) s.shutdown();
    const deadline = Date.now() + graceMs;
    while (this.sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const s of [...this.sessions]) s.abort('shutdown');
    this.engine?.release();
    this.engine = undefined;
    await this.cluster?.stop();
    this.cache.stop();
    this.reputation.stop();
    this.store.close();
  }
}
