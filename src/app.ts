// Composition root: builds etd's parts from one Config with explicit dependencies; start, reload, stop in order.
// biome-ignore-all lint/style/noExcessiveLinesPerFile: the composition root still carries the worker roles and admission; issue 23 moves admission to its own module and deletes the roles (target ≤ 250 lines)

import type { Logger } from 'pino';
import { HealthChecker } from './backend/health.js';
import { Pool } from './backend/pool.js';
import { consultShared, localState } from './cluster/attach.js';
import type { SharedState } from './cluster/shared.js';
import { parseAddress } from './config/cidr.js';
import type { Config, ListenerConfig } from './config/schema.js';
import { describeError, EtdError } from './errors.js';
import { loadTransparent } from './native/transparent.js';
import { AccessLists } from './policy/access.js';
import { ClientCache, cacheKey } from './policy/clientCache.js';
import { type EngineDriver, engineDriver, type NativeAccept } from './proxy/engineDriver.js';
import { type BoundFd, bindListener, Listener } from './proxy/listener.js';
import { policyOf } from './proxy/policy.js';
import type {
  EngineCounts,
  LiveSession,
  LiveSessionView,
  SessionContext,
  SessionPolicy,
  SessionReputation,
  SessionSummary,
} from './proxy/protocol.js';
import { nextSessionId, Session, SHUTDOWN_REPLY, summaryOf, viewOfSession } from './proxy/session.js';
import { createSource } from './proxy/upstream.js';
import { applyScore, judge, refusalOf, vouching, watchLookups } from './reputation/gate.js';
import { Reputation } from './reputation/lookup.js';
import { openStore, type StateStore, WORKER_STORE } from './state/store.js';
import { Stats } from './stats.js';
import { hostPort } from './util/address.js';
import { Board } from './workers/board.js';
import { BoardCounts, type LiveCounts, LocalCounts } from './workers/counts.js';
import type { WorkerGroup } from './workers/group.js';
import type { WorkerSide } from './workers/side.js';

const closeFd = (fd: number): void => loadTransparent().closeFd(fd);

/** A listener's session context: the policy in force is the normal or the stress one. */
interface ListenerContext extends SessionContext {
  normal: SessionPolicy;
  stress: SessionPolicy;
}

/** What decides the netfilter setup, which is applied at start: only a restart changes it. */
function netfilterKey(c: Config): string {
  const modes = [...new Set(c.listeners.map((l) => l.mode).filter((m) => m !== 'plain'))].sort();
  const intercepted = c.listeners.filter((l) => l.mode === 'intercept').map((l) => [l.port, [...l.destinations].sort()]);
  return JSON.stringify([c.netfilter, modes, intercepted]);
}

function listenerKey(l: ListenerConfig): string {
  return JSON.stringify([l.name, l.address, l.port, l.mode, l.backlog, l.destinations, l.freebind]);
}

/**
 * The main thread's sessions of a multi-worker etd: the sessions live in the workers, so the Set
 * is empty and its size is their count on the shared board (for logs, tests and the API totals).
 */
class RemoteSessions extends Set<LiveSession> {
  constructor(private readonly count: () => number) {
    super();
  }
  override get size(): number {
    return this.count();
  }
}

/** What happens to a new connection, before any session exists: decided by limits, access lists and caches. */
type Admission =
  | { readonly refuse: 'max_connections' | 'max_held' | 'per_client'; readonly reply: string }
  | { readonly deny: 'access_deny' | 'deny_cache' }
  | { readonly skip: 'allowlist' | 'pass_cache' | undefined };

// Every answer admission can give, made once (admission runs for every connection).
const BUSY = '421 4.7.0 Too many connections, try again later';
const ADMIT = {
  maxConnections: { refuse: 'max_connections', reply: BUSY },
  maxHeld: { refuse: 'max_held', reply: BUSY },
  perClient: { refuse: 'per_client', reply: '421 4.7.0 Too many connections from your address' },
  accessDeny: { deny: 'access_deny' },
  denyCache: { deny: 'deny_cache' },
  allowlist: { skip: 'allowlist' },
  passCache: { skip: 'pass_cache' },
  window: { skip: undefined },
} as const satisfies Record<string, Admission>;

/** A listener as the API shows it: its config and the addresses it is bound to. */
export interface ListenerView {
  readonly config: ListenerConfig;
  addresses(): Array<{ address: string; port: number }>;
}

/** Hooks for parts that observe sessions (API event ring, metrics); all optional. */
export interface AppObserver {
  sessionEnded?(summary: SessionSummary): void;
}

/**
 * Three roles (docs/workers.md): with `workers: 1` one App runs everything on the main thread.
 * With more, the App on the main thread owns the state (store, caches, access lists, health
 * checks, cluster, API, logs) and binds the listening sockets, and an App in each engine worker
 * thread (`worker` set) runs its engine and decides for its own connections.
 */
export class App {
  readonly stats = new Stats();
  readonly pool: Pool;
  /** Active SMTP checks of the pool's servers (rise/fall); `health.status(name)` for the API. */
  readonly health: HealthChecker;
  /** This thread's live sessions (with several workers, the main thread's Set is empty and its size is all workers' sessions). */
  readonly sessions: Set<LiveSession>;
  private listeners = new Map<string, Listener>();
  private stopping = false;
  /** Sessions held or relayed, for the limits and the stress window: this thread's, or all workers' (shared board). */
  private counts: LiveCounts = new LocalCounts();
  private readonly observers: AppObserver[] = [];
  /** The engine workers, on the main thread of a multi-worker etd (from start). */
  workers: WorkerGroup | undefined;
  /** Main thread of a multi-worker etd: the sockets bound for the workers, by listener. */
  private bound = new Map<string, { config: ListenerConfig; fds: BoundFd[][] }>();
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

  constructor(
    private config: Config,
    readonly log: Logger,
    /** Set in an engine worker thread: its link to the main thread (src/workers/side.ts). */
    private readonly worker?: WorkerSide,
  ) {
    // Main thread of several workers: a session counts until its summary line has arrived here.
    this.sessions =
      worker || config.workers <= 1 ? new Set() : new RemoteSessions(() => this.counts.sessions + (this.workers?.board.unreported ?? 0));
    this.store = worker ? WORKER_STORE : openStore(config.state.path, log);
    this.access = new AccessLists(config.access, worker ? worker.init.access : this.store.loadAccess());
    this.cache = new ClientCache(config.cache, this.store);
    this.reputation = new Reputation(config.reputation, log.child({ part: 'reputation' }));
    this.pool = new Pool(config.upstream.servers, config.upstream.balance, { passiveFall: config.upstream.passiveFall });
    // The main thread logs server changes (a worker's passive "down" reaches it as a message).
    if (!worker)
      this.pool.onChange((c) =>
        this.log.warn({ server: c.server, from: c.from, to: c.to, reason: c.reason }, `server ${c.server} is now ${c.to}`),
      );
    // Health checks run on the main thread only; workers are told the outcome.
    this.health = new HealthChecker(this.pool, worker ? { ...config.upstream.health, enabled: false } : config.upstream.health, log);
    if (worker) {
      this.counts = new BoardCounts(worker.board, worker.index);
      for (const [key, kind, expires] of worker.init.cache) this.cache.adopt(key, kind, expires);
      for (const st of worker.init.servers) {
        const s = this.pool.get(st.name);
        if (s) {
          s.admin = st.admin;
          s.healthy = st.healthy;
          s.lastReason = st.reason;
        }
      }
    }
  }

  /** True while the held connections (all workers') are above detection.stress.above (until below .below). */
  get stressed(): boolean {
    return this.counts.stressed;
  }

  get stressChanges(): number {
    return this.counts.stressChanges;
  }

  /** The live sessions as the API lists them, oldest first (all workers'). */
  async liveSessions(): Promise<LiveSessionView[]> {
    if (this.workers) return this.workers.sessions();
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

  /** What the native engine owns now (all workers' engines, summed), or null when it is not running (before start, after stop). */
  engineCounts(): (EngineCounts & { handlerErrors: number }) | null {
    if (this.workers) return this.workers.engineCounts();
    if (!this.engine) return null;
    return { ...this.engine.engine.counts(), handlerErrors: this.engine.handlerErrors };
  }

  listenerList(): readonly ListenerView[] {
    if (!this.worker && this.config.workers > 1) {
      return [...this.bound.values()].map(({ config, fds }) => ({
        config,
        addresses: () => (fds[0] ?? []).map(({ address, port }) => ({ address, port })),
      }));
    }
    return [...this.listeners.values()];
  }

  async start(): Promise<void> {
    if (this.worker) return this.startWorker(this.worker);
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
    if (this.config.workers > 1) {
      await this.startWorkers();
    } else {
      const driver = engineDriver();
      driver.acquire(this.log);
      this.engine = driver;
      for (const l of this.config.listeners) await this.startListener(l);
    }
    // Checks begin once etd serves (with several workers, starting them takes a few hundred ms).
    this.health.start();
  }

  /** Main thread, several workers: binds every listener once per worker, then starts the workers. */
  private async startWorkers(): Promise<void> {
    const n = this.config.workers;
    const board = Board.create(n);
    this.counts = new BoardCounts(board, -1);
    try {
      for (const l of this.config.listeners)
        this.bound.set(l.name, { config: l, fds: bindListener(l, this.config.netfilter.tproxyPort, n) });
    } catch (e) {
      this.closeBound();
      throw e;
    }
    const { WorkerGroup } = await import('./workers/group.js');
    this.workers = new WorkerGroup(this.config, board, this.log, this.ownerHooks());
    this.workers.countInto(this.stats);
    const fds = (i: number) => Object.fromEntries([...this.bound].map(([name, b]) => [name, b.fds[i] ?? []]));
    await this.workers.start(fds);
    for (const l of this.bound.values()) {
      this.log.info({ addresses: (l.fds[0] ?? []).map((a) => hostPort(a.address, a.port)), mode: l.config.mode, workers: n }, 'listening');
    }
  }

  /** Closes the sockets the main thread bound and no worker took (a failed start). */
  private closeBound(): void {
    for (const b of this.bound.values()) for (const fds of b.fds) for (const f of fds) closeFd(f.fd);
    this.bound.clear();
  }

  /** Engine worker thread: the state comes from the main thread; the listeners' sockets too. */
  private async startWorker(side: WorkerSide): Promise<void> {
    this.cache.startSweeping();
    this.cluster = side.cluster as SharedState | undefined;
    if (this.reputation.enabled) this.reputation.share(side.answers);
    side.serve(this);
    const driver = engineDriver();
    driver.acquire(this.log);
    this.engine = driver;
    for (const l of this.config.listeners) await this.startListener(l, this.config, side.fds(l.name) ?? []);
  }

  /** What the engine workers need from the main thread's App (src/workers/group.ts). */
  private ownerHooks(): import('./workers/group.js').Owner {
    return {
      ended: (summary) => this.recordEnd(summary),
      learnt: (kind, address) => this.learnt(kind, kind === 'pass' ? this.cache.recordPass(address) : this.cache.recordDeny(address)),
      cache: this.cache,
      access: this.access,
      pool: this.pool,
      cluster: () => this.cluster,
      reputation: this.reputation,
      rebind: (worker) => this.rebindFor(worker),
    };
  }

  /** A restarted worker's sockets: each listener bound again on its resolved port, with SO_REUSEPORT. */
  private rebindFor(worker: number): Record<string, BoundFd[]> {
    const out: Record<string, BoundFd[]> = {};
    try {
      for (const [name, b] of this.bound) {
        const port = b.fds[0]?.[0]?.port ?? b.config.port;
        const fds = bindListener(
          b.config.mode === 'intercept' ? b.config : { ...b.config, port },
          this.config.netfilter.tproxyPort,
          1,
          true,
        )[0]!;
        b.fds[worker] = fds;
        out[name] = fds;
      }
    } catch (e) {
      for (const fds of Object.values(out)) for (const f of fds) closeFd(f.fd);
      throw e;
    }
    return out;
  }

  private makeContext(l: ListenerConfig, config: Config): ListenerContext {
    const app = this;
    return {
      listener: l.name,
      mode: l.mode,
      log: this.log.child({ listener: l.name }),
      pool: this.pool,
      source: createSource(config.upstream.source),
      normal: policyOf(config),
      stress: policyOf(config, true),
      get policy() {
        return app.stressed ? this.stress : this.normal;
      },
      sessionStarted(s) {
        app.sessions.add(s);
        app.stats.held++;
        app.counts.started(s.clientAddress);
        app.checkStress();
      },
      sessionRelaying(s) {
        // It waited for the greeting: next time it skips the window. A client let in by its
        // allowlist score (released: dnswl) did not wait, so it earns no pass: its lookups vouch for it again.
        if (!s.talked && !s.skipped && s.released !== 'dnswl') app.learnt('pass', app.cache.recordPass(s.clientAddress), s.clientAddress);
        app.stats.held--;
        app.stats.relaying++;
        app.stats.relayed++;
        app.counts.relaying();
        app.checkStress();
      },
      sessionEnded(s, summary) {
        app.sessions.delete(s);
        if (s.relayed) app.stats.relaying--;
        else app.stats.held--;
        app.worker?.ending();
        app.counts.ended(s.clientAddress, s.relayed);
        if (summary.verdict === 'early_talker' || summary.verdict === 'protocol')
          app.learnt('deny', app.cache.recordDeny(s.clientAddress), s.clientAddress);
        app.checkStress();
        app.recordEnd(summary);
      },
    };
  }

  /**
   * A verdict recorded in the local cache goes to the cluster too (batched, never awaited). In an
   * engine worker it goes to the main thread, which records it for every worker and the cluster.
   */
  private learnt(kind: 'pass' | 'deny', entry: { key: string; expires: number } | undefined, address?: string): void {
    if (!entry) return;
    if (this.worker) {
      if (address !== undefined) this.worker.learnt(kind, address);
      return;
    }
    this.cluster?.recordCache(entry.key, kind, entry.expires);
  }

  /**
   * Stress: above `stress.above` held connections the window shortens (postscreen's 6s → 2s),
   * and below `stress.below` the normal window returns. Hysteresis keeps it from flapping.
   */
  private checkStress(): void {
    const { above, below } = this.config.detection.stress;
    const counts = this.counts;
    const held = counts.held;
    if (!counts.stressed && held > above) {
      if (counts.setStressed(true))
        this.log.warn(
          { held, above, window: this.config.detection.stress.windowMs },
          'entering stress: shorter window for new connections',
        );
    } else if (counts.stressed && held < below) {
      if (counts.setStressed(false))
        this.log.warn({ held, below, window: this.config.detection.windowMs }, 'leaving stress: normal window again');
    }
  }

  /** The summary line goes to the root logger: it carries `listener` itself (a child logger's binding would repeat the key). */
  private recordEnd(summary: SessionSummary): void {
    this.stats.ended(summary);
    if (this.worker) {
      // The main thread writes the line and tells the observers (API ring, history, metrics).
      this.worker.summary(summary);
      return;
    }
    this.log.info(summary, 'session');
    for (const o of this.observers) o.sessionEnded?.(summary);
  }

  private async startListener(l: ListenerConfig, config = this.config, given?: readonly BoundFd[]): Promise<Listener> {
    const ctx = this.makeContext(l, config);
    const listener = new Listener(l, ctx, this.engine!, (conn, c) => this.accept(conn, c), config.netfilter.tproxyPort, given);
    await listener.start();
    this.listeners.set(l.name, listener);
    return listener;
  }

  /** Limits first, then the allow/deny lists, then the caches: a listed client never waits or is always refused. */
  private admit(address: string): Admission {
    const limits = this.config.limits;
    const counts = this.counts;
    if (counts.sessions >= limits.maxConnections) return ADMIT.maxConnections;
    if (counts.held >= limits.maxHeld) return ADMIT.maxHeld;
    if (limits.perClient > 0 && counts.perClient(address) >= limits.perClient) return ADMIT.perClient;
    // Parsed once here, then one hash lookup per prefix length in use (src/policy/access.ts).
    const parsed = parseAddress(address);
    const listed = typeof parsed === 'string' ? undefined : this.access.match(parsed);
    if (listed?.list === 'deny') return ADMIT.accessDeny;
    if (listed) return ADMIT.allowlist;
    const cached = this.cache.lookup(address);
    if (cached === 'deny') return ADMIT.denyCache;
    return cached === 'pass' ? ADMIT.passCache : ADMIT.window;
  }

  /** A connection the engine accepted: admission decides, then a session or an answer at once. */
  private accept(conn: NativeAccept, ctx: SessionContext): void {
    this.stats.accepted++;
    if (this.stopping) {
      // Arrived while etd stops (still in the accept queue): the same polite 421 as a held client.
      const sent = this.answer(conn, ctx, `${SHUTDOWN_REPLY}\r\n`);
      this.endedAtAccept(ctx, conn, 'shutdown', 'shutdown', sent);
      return;
    }
    const a = this.admit(conn.peerAddress);
    if ('refuse' in a) {
      const sent = this.answer(conn, ctx, `${a.reply}\r\n`);
      this.stats.limits[a.refuse]++;
      this.endedAtAccept(ctx, conn, 'limit', a.refuse, sent);
    } else if ('deny' in a) {
      let sent = 0;
      if (this.config.access.denyAction === 'drop') this.engine!.engine.drop(conn.eid);
      else sent = this.answer(conn, ctx, `${this.config.access.denyReply}\r\n`);
      this.endedAtAccept(ctx, conn, 'denied', a.deny, sent);
    } else if (a.skip === 'allowlist' || !this.reputation.enabled) {
      const session = new Session(this.engine!, conn, ctx, a.skip);
      session.begin();
      this.consultCluster(session, conn, a.skip);
    } else {
      this.acceptWithReputation(conn, ctx, a.skip);
    }
  }

  /** A local miss: the window runs as usual and the cluster is asked alongside (never awaited). */
  private consultCluster(session: Session, conn: NativeAccept, skip: 'allowlist' | 'pass_cache' | undefined): void {
    if (skip === undefined && this.cluster && this.config.cache.enabled && session.holding) {
      const held = this.reputation.enabled ? vouching(session) : session;
      consultShared(this.cluster, held, cacheKey(conn.peerAddress, this.config.cache.scope), () => this.config.access);
    }
  }

  /**
   * A window or pass-cache admission with DNSBL lists configured: a score already cached decides
   * now (refused at accept, or connected at once); otherwise the lookups run during the hold.
   * A returning sender (pass cache) is held only as long as its lookups may take.
   */
  private acceptWithReputation(conn: NativeAccept, ctx: SessionContext, skip: 'pass_cache' | undefined): void {
    const rep = this.reputation;
    const known = rep.cached(conn.peerAddress);
    if (known) {
      const j = judge(rep.settings, known);
      if (j.decision === 'refuse') {
        rep.decided('refuse', known);
        const r = refusalOf(rep.settings, conn.peerAddress, known);
        let sent = 0;
        if ('drop' in r.how) this.engine!.engine.drop(conn.eid);
        else sent = this.answer(conn, ctx, `${r.how.reply}\r\n`);
        this.endedAtAccept(ctx, conn, 'dnsbl', r.cause, sent, j.facts);
        return;
      }
      const s = new Session(this.engine!, conn, ctx, skip);
      if (j.decision === 'allow' && !skip) {
        // Held for an instant, then released: the summary says `released: dnswl`.
        s.begin();
        applyScore(s, rep, known);
        return;
      }
      // The window as usual, or a returning sender whose answers are still valid: connected at once.
      rep.decided(j.decision, known);
      s.noteReputation(j.facts);
      s.begin();
      this.consultCluster(s, conn, skip);
      return;
    }
    const s = new Session(this.engine!, conn, ctx, skip);
    const holdMs = skip ? Math.min(rep.settings.timeoutMs, s.policy.windowMs) : s.policy.windowMs;
    s.begin(skip ? holdMs : undefined);
    if (!s.done && holdMs > 0) watchLookups(s, rep, holdMs);
    this.consultCluster(s, conn, skip);
  }

  /** A reply at accept, lingering by the listener's policy (replyLingerMs); the bytes written. */
  private answer(conn: NativeAccept, ctx: SessionContext, text: string): number {
    const driver = this.engine!;
    return driver.engine.reply(conn.eid, { text, profile: driver.profile(ctx.policy.profile) });
  }

  /** A connection answered at accept, before any session existed: its summary line (`sent`: the reply's bytes, -1 none). */
  private endedAtAccept(
    ctx: SessionContext,
    conn: NativeAccept,
    verdict: 'denied' | 'limit' | 'shutdown' | 'dnsbl',
    cause: string,
    sent: number,
    reputation?: SessionReputation,
  ): void {
    this.worker?.ending();
    this.recordEnd(
      summaryOf({
        id: nextSessionId(),
        listener: ctx.listener,
        clientAddress: conn.peerAddress,
        clientPort: conn.peerPort,
        verdict,
        cause,
        heldMs: 0,
        bytesFromClient: 0,
        bytesToClient: Math.max(0, sent),
        ...(reputation ? { reputation } : {}),
      }),
    );
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
        {
          hint: 'these are applied at start; restart etd (systemctl restart etd) to change them',
        },
      );
    }
    if (next.workers !== prev.workers && !this.worker)
      this.log.warn({ from: prev.workers, to: next.workers }, 'workers changes take effect at the next restart');
    // The worker count is fixed at start: the config every part keeps says so.
    next = next.workers === prev.workers ? next : { ...next, workers: prev.workers, workersSetting: prev.workersSetting };
    if (this.workers) {
      await this.reloadWorkers(next);
    } else {
      await this.reloadListeners(next, prev);
    }
    this.config = next;
    this.pool.update(next.upstream.servers, next.upstream.balance);
    this.workers?.linkServers();
    this.access.replaceConfig(next.access);
    this.cache.update(next.cache);
    this.reputation.update(next.reputation);
    this.health.update(this.worker ? { ...next.upstream.health, enabled: false } : next.upstream.health);
    if (JSON.stringify(next.cluster) !== JSON.stringify(prev.cluster) && !this.worker)
      this.log.warn({}, 'cluster changes take effect at the next restart');
    if (next.state.path !== prev.state.path && !this.worker)
      this.log.warn({ from: prev.state.path, to: next.state.path }, 'state.path changes take effect at the next restart');
    for (const listener of this.listeners.values()) {
      const ctx = listener.ctx as ListenerContext;
      ctx.normal = policyOf(next);
      ctx.stress = policyOf(next, true);
      if (prev.upstream.source !== next.upstream.source) ctx.source = createSource(next.upstream.source);
    }
  }

  /**
   * Main thread, several workers: the new and changed listeners are bound here first (the only
   * step that can fail, so a failed bind changes nothing anywhere); then every worker applies the
   * new config with its sockets. A worker that cannot is restarted with it: all run the new one.
   */
  private async reloadWorkers(next: Config): Promise<void> {
    const n = next.workers;
    const fresh = new Map<string, { config: ListenerConfig; fds: BoundFd[][] }>();
    try {
      for (const l of next.listeners) {
        const have = this.bound.get(l.name);
        if (have && listenerKey(have.config) === listenerKey(l)) continue;
        fresh.set(l.name, { config: l, fds: bindListener(l, next.netfilter.tproxyPort, n) });
      }
    } catch (e) {
      for (const b of fresh.values()) for (const fds of b.fds) for (const f of fds) closeFd(f.fd);
      throw e;
    }
    const wanted = new Set(next.listeners.map((l) => l.name));
    // Removed listeners: their workers close the sockets (unlisten); changed ones are replaced.
    for (const name of [...this.bound.keys()]) if (!wanted.has(name)) this.bound.delete(name);
    for (const [name, b] of fresh) this.bound.set(name, b);
    await this.workers!.reload(next, (i) => Object.fromEntries([...fresh].map(([name, b]) => [name, b.fds[i] ?? []])));
  }

  /** One thread (or an engine worker with the sockets the main thread bound): listeners are stopped, started or rebound. */
  private async reloadListeners(next: Config, prev: Config): Promise<void> {
    // Listeners first: it is the only step that can fail. If a bind fails, what was stopped is
    // started again and nothing else changes, so a reload is all or nothing.
    const wanted = new Map(next.listeners.map((l) => [l.name, l]));
    const stopped: Listener[] = [];
    const started: Listener[] = [];
    try {
      const given = this.worker;
      for (const [name, listener] of [...this.listeners]) {
        const want = wanted.get(name);
        // An engine worker restarts exactly the listeners the main thread sent sockets for.
        if (!want || (given ? given.fds(name) !== undefined : listenerKey(want) !== listenerKey(listener.config))) {
          await listener.stop();
          this.listeners.delete(name);
          stopped.push(listener);
        }
      }
      for (const l of next.listeners) {
        if (!this.listeners.has(l.name)) started.push(await this.startListener(l, next, given?.fds(l.name)));
      }
    } catch (e) {
      for (const l of started) {
        await l.stop();
        this.listeners.delete(l.config.name);
      }
      for (const l of stopped)
        await this.startListener(l.config, prev).catch((err: unknown) =>
          this.log.error({ err: describeError(err), listener: l.config.name }, 'could not restore a listener after a failed reload'),
        );
      throw e;
    }
  }

  /** Stops accepting, sends 421 to held clients, lets relayed sessions finish within the grace time. */
  async stop(graceMs = this.config.timeouts.shutdownGraceMs): Promise<void> {
    this.stopping = true;
    this.health.stop();
    if (this.workers) {
      // Every worker drains as one etd would (421 to held clients, relayed ones finish within the grace time).
      await this.workers.stop(graceMs);
      this.workers = undefined;
    }
    // The workers' engines closed the sockets the main thread bound for them.
    this.bound.clear();
    await Promise.all([...this.listeners.values()].map((l) => l.stop()));
    this.listeners.clear();
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
