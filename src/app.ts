// Composition root: builds etd's parts from one Config with explicit dependencies; start, reload, stop in order.

import net from 'node:net';
import type { Logger } from 'pino';
import type { Config, ListenerConfig } from './config/schema.js';
import { Pool } from './backend/pool.js';
import { HealthChecker } from './backend/health.js';
import { TimerHoldQueue } from './proxy/holdQueue.js';
import { Listener, fmt } from './proxy/listener.js';
import { Session, type LiveSession, type SessionContext, type SessionPolicy, type SessionSummary } from './proxy/session.js';
import { createSource } from './proxy/upstream.js';
import { engineDriver, type EngineDriver, type NativeAccept } from './proxy/engineDriver.js';
import { NativeSession } from './proxy/nativeSession.js';
import { Stats } from './stats.js';
import { EtdError, describeError } from './errors.js';
import { normalizeAddress } from './config/cidr.js';
import { AccessLists } from './policy/access.js';
import { ClientCache } from './policy/clientCache.js';
import { openStore, type StateStore } from './state/store.js';

/** A listener's session context: the policy in force is the normal or the stress one. */
interface ListenerContext extends SessionContext {
  normal: SessionPolicy;
  stress: SessionPolicy;
}

/** The session policy for a config; under stress the window is the stress window. */
export function policyOf(config: Config, stressed = false): SessionPolicy {
  return {
    windowMs: stressed ? config.detection.stress.windowMs : config.detection.windowMs,
    action: config.detection.action,
    rejectReply: config.detection.rejectReply,
    noServerReply: config.upstream.noServerReply,
    connectTimeoutMs: config.upstream.connectTimeoutMs,
    retries: config.upstream.retries,
    clientIdleMs: config.timeouts.clientMs,
    serverIdleMs: config.timeouts.serverMs,
    forward: config.upstream.forward,
    stripPipeconnect: config.detection.stripPipeconnect,
    teaser: config.detection.teaser,
  };
}

/** What decides the netfilter setup, which is applied at start: only a restart changes it. */
function netfilterKey(c: Config): string {
  const modes = [...new Set(c.listeners.map((l) => l.mode).filter((m) => m !== 'plain'))].sort();
  const intercepted = c.listeners.filter((l) => l.mode === 'intercept').map((l) => [l.port, [...l.destinations].sort()]);
  return JSON.stringify([c.netfilter, modes, intercepted]);
}

function listenerKey(l: ListenerConfig): string {
  return JSON.stringify([l.name, l.address, l.port, l.mode, l.backlog, l.destinations, l.engine]);
}

/** What happens to a new connection, before any session exists: decided by limits, access lists and caches. */
type Admission =
  | { readonly refuse: 'max_connections' | 'max_held' | 'per_client'; readonly reply: string }
  | { readonly deny: 'access_deny' | 'deny_cache' }
  | { readonly skip: 'allowlist' | 'pass_cache' | undefined };

/** Policies only the Node engine implements: a teaser line, and relaying early talkers (action: log). */
function needsNodeEngine(p: SessionPolicy): boolean {
  return p.teaser !== undefined || p.action === 'log';
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
  readonly hold = new TimerHoldQueue<Session>();
  readonly sessions = new Set<LiveSession>();
  private listeners = new Map<string, Listener>();
  private stopping = false;
  /** Connections (held or relayed) per client address, for limits.perClient. */
  private readonly perClient = new Map<string, number>();
  /** True while the held connections are above detection.stress.above (until below .below). */
  stressed = false;
  stressChanges = 0;
  private readonly observers: AppObserver[] = [];
  /** SQLite (or, when that fails, memory) behind the caches and runtime access entries. */
  readonly store: StateStore;
  readonly access: AccessLists;
  readonly cache: ClientCache;
  /** The native session engine, once a native listener started (released at stop). */
  private engine: EngineDriver | undefined;

  constructor(
    private config: Config,
    readonly log: Logger,
  ) {
    this.store = openStore(config.state.path, log);
    this.access = new AccessLists(config.access, this.store.loadAccess());
    this.cache = new ClientCache(config.cache, this.store);
    this.pool = new Pool(config.upstream.servers, config.upstream.balance, { passiveFall: config.upstream.passiveFall });
    this.pool.onChange((c) => this.log.warn({ server: c.server, from: c.from, to: c.to, reason: c.reason }, `server ${c.server} is now ${c.to}`));
    this.health = new HealthChecker(this.pool, config.upstream.health, log);
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

  /** What the native engine owns now, or null when no listener runs on it. */
  engineCounts(): { connections: number; fds: number } | null {
    if (!this.engine) return null;
    const c = this.engine.addon.engineCounts();
    return { connections: c.connections, fds: c.fds };
  }

  listenerList(): readonly Listener[] {
    return [...this.listeners.values()];
  }

  async start(): Promise<void> {
    const t0 = performance.now();
    const loaded = this.cache.load();
    this.log.info({ entries: loaded, ms: Math.round(performance.now() - t0), store: this.store.location }, 'client cache loaded');
    this.cache.startSweeping();
    this.health.start();
    for (const l of this.config.listeners) await this.startListener(l);
  }

  private makeContext(l: ListenerConfig, config: Config): ListenerContext {
    const app = this;
    return {
      listener: l.name,
      mode: l.mode,
      log: this.log.child({ listener: l.name }),
      pool: this.pool,
      hold: this.hold,
      source: createSource(config.upstream.source),
      normal: policyOf(config),
      stress: policyOf(config, true),
      get policy() {
        return app.stressed ? this.stress : this.normal;
      },
      sessionStarted(s) {
        app.sessions.add(s);
        app.stats.held++;
        app.perClient.set(s.clientAddress, (app.perClient.get(s.clientAddress) ?? 0) + 1);
        app.checkStress();
      },
      sessionRelaying(s) {
        // It waited for the greeting: next time it skips the window.
        if (!s.talked && !s.skipped) app.cache.recordPass(s.clientAddress);
        app.stats.held--;
        app.stats.relaying++;
        app.stats.relayed++;
        app.checkStress();
      },
      sessionEnded(s, summary) {
        app.sessions.delete(s);
        if (s.relayed) app.stats.relaying--;
        else app.stats.held--;
        const n = (app.perClient.get(s.clientAddress) ?? 1) - 1;
        if (n > 0) app.perClient.set(s.clientAddress, n);
        else app.perClient.delete(s.clientAddress);
        if (summary.verdict === 'early_talker') app.cache.recordDeny(s.clientAddress);
        app.checkStress();
        app.recordEnd(this.log, summary);
      },
    };
  }

  /**
   * Stress: above `stress.above` held connections the window shortens (postscreen's 6s → 2s),
   * and below `stress.below` the normal window returns. Hysteresis keeps it from flapping.
   */
  private checkStress(): void {
    const { above, below } = this.config.detection.stress;
    const held = this.stats.held;
    if (!this.stressed && held > above) {
      this.stressed = true;
      this.stressChanges++;
      this.log.warn({ held, above, window: this.config.detection.stress.windowMs }, 'entering stress: shorter window for new connections');
    } else if (this.stressed && held < below) {
      this.stressed = false;
      this.stressChanges++;
      this.log.warn({ held, below, window: this.config.detection.windowMs }, 'leaving stress: normal window again');
    }
  }

  private recordEnd(log: Logger, summary: SessionSummary): void {
    this.stats.ended(summary);
    log.info(summary, 'session');
    for (const o of this.observers) o.sessionEnded?.(summary);
  }

  private async startListener(l: ListenerConfig, config = this.config): Promise<Listener> {
    const ctx = this.makeContext(l, config);
    let native: ConstructorParameters<typeof Listener>[4];
    if (l.engine === 'native') {
      if (!this.engine) {
        const driver = engineDriver();
        driver.acquire(this.log);
        this.engine = driver;
      }
      native = { driver: this.engine, onAccept: (conn, c) => this.acceptNative(conn, c) };
    }
    const listener = new Listener(l, ctx, (socket, c) => this.accept(socket, c), config.netfilter.tproxyPort, native);
    await listener.start();
    this.listeners.set(l.name, listener);
    return listener;
  }

  /** Limits first, then the allow/deny lists, then the caches: a listed client never waits or is always refused. */
  private admit(address: string): Admission {
    const limits = this.config.limits;
    if (this.sessions.size >= limits.maxConnections) return { refuse: 'max_connections', reply: '421 4.7.0 Too many connections, try again later' };
    if (this.stats.held >= limits.maxHeld) return { refuse: 'max_held', reply: '421 4.7.0 Too many connections, try again later' };
    if (limits.perClient > 0 && (this.perClient.get(address) ?? 0) >= limits.perClient) {
      return { refuse: 'per_client', reply: '421 4.7.0 Too many connections from your address' };
    }
    const listed = this.access.match(address);
    if (listed?.list === 'deny') return { deny: 'access_deny' };
    if (listed) return { skip: 'allowlist' };
    const cached = this.cache.lookup(address);
    if (cached === 'deny') return { deny: 'deny_cache' };
    return { skip: cached === 'pass' ? 'pass_cache' : undefined };
  }

  private accept(socket: net.Socket, ctx: SessionContext): void {
    this.stats.accepted++;
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const address = normalizeAddress(socket.remoteAddress ?? '');
    const port = socket.remotePort ?? 0;
    const a = this.admit(address);
    if ('refuse' in a) {
      socket.on('error', () => socket.destroy());
      socket.resume();
      socket.end(`${a.reply}\r\n`);
      socket.setTimeout(5000, () => socket.destroy());
      this.refused(ctx, address, port, a.refuse);
    } else if ('deny' in a) {
      socket.on('error', () => socket.destroy());
      if (this.config.access.denyAction === 'drop') socket.resetAndDestroy();
      else {
        socket.resume();
        socket.end(`${this.config.access.denyReply}\r\n`);
        socket.setTimeout(5000, () => socket.destroy());
      }
      this.denied(ctx, address, port, a.deny);
    } else {
      new Session(socket, ctx, a.skip).begin();
    }
  }

  /** A connection accepted by the native engine: the same decisions; the engine does the I/O. */
  private acceptNative(conn: NativeAccept, ctx: SessionContext): void {
    const engine = this.engine!.addon;
    if (this.stopping) {
      this.stats.accepted++;
      engine.engineDrop(conn.eid);
      return;
    }
    if (needsNodeEngine(ctx.policy)) {
      // Hand the connection over to a Node socket (accept() counts it).
      const fd = engine.engineRelease(conn.eid);
      const socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
      socket.setNoDelay(true);
      this.accept(socket, ctx);
      return;
    }
    this.stats.accepted++;
    const a = this.admit(conn.peerAddress);
    if ('refuse' in a) {
      engine.engineReply(conn.eid, `${a.reply}\r\n`);
      this.refused(ctx, conn.peerAddress, conn.peerPort, a.refuse);
    } else if ('deny' in a) {
      if (this.config.access.denyAction === 'drop') engine.engineDrop(conn.eid);
      else engine.engineReply(conn.eid, `${this.config.access.denyReply}\r\n`);
      this.denied(ctx, conn.peerAddress, conn.peerPort, a.deny);
    } else {
      new NativeSession(this.engine!, conn, ctx, a.skip).begin();
    }
  }

  /** The summary of a denied client (access list or deny cache: 554 5.7.1 and close, or drop). */
  private denied(ctx: SessionContext, address: string, port: number, cause: 'access_deny' | 'deny_cache'): void {
    this.endedAtAccept(ctx, address, port, 'denied', cause);
  }

  /** The summary of a connection refused by a limit (421 and close). */
  private refused(ctx: SessionContext, address: string, port: number, cause: 'max_connections' | 'max_held' | 'per_client'): void {
    this.stats.limits[cause]++;
    this.endedAtAccept(ctx, address, port, 'limit', cause);
  }

  /** A connection answered at accept, before any session existed: its summary line. */
  private endedAtAccept(ctx: SessionContext, address: string, port: number, verdict: 'denied' | 'limit', cause: string): void {
    this.recordEnd(ctx.log, {
      id: 0,
      listener: ctx.listener,
      client: fmt(address, port),
      clientAddress: address,
      verdict,
      attempts: 0,
      heldMs: 0,
      durationMs: 0,
      bytesFromClient: 0,
      bytesToClient: 0,
      cause,
    });
  }

  /**
   * Applies a new, already validated config. Held and relayed sessions keep the policy they
   * started with; new connections get the new one. Listeners are added, removed or rebound.
   */
  async reload(next: Config): Promise<void> {
    const prev = this.config;
    if (netfilterKey(next) !== netfilterKey(prev)) {
      throw new EtdError('ETD_ERR_CONFIG_INVALID', 'reload refused: the netfilter section, the transparent modes or the intercepted ports/destinations changed', {
        hint: 'these are applied at start; restart etd (systemctl restart etd) to change them',
      });
    }
    // Listeners first: it is the only step that can fail. If a bind fails, what was stopped is
    // started again and nothing else changes, so a reload is all or nothing.
    const wanted = new Map(next.listeners.map((l) => [l.name, l]));
    const stopped: Listener[] = [];
    const started: Listener[] = [];
    try {
      for (const [name, listener] of [...this.listeners]) {
        const want = wanted.get(name);
        if (!want || listenerKey(want) !== listenerKey(listener.config)) {
          await listener.stop();
          this.listeners.delete(name);
          stopped.push(listener);
        }
      }
      for (const l of next.listeners) {
        if (!this.listeners.has(l.name)) started.push(await this.startListener(l, next));
      }
    } catch (e) {
      for (const l of started) {
        await l.stop();
        this.listeners.delete(l.config.name);
      }
      for (const l of stopped) await this.startListener(l.config, prev).catch((err: unknown) => this.log.error({ err: describeError(err), listener: l.config.name }, 'could not restore a listener after a failed reload'));
      throw e;
    }
    this.config = next;
    this.pool.update(next.upstream.servers, next.upstream.balance);
    this.access.replaceConfig(next.access);
    this.cache.update(next.cache);
    this.health.update(next.upstream.health);
    if (next.state.path !== prev.state.path) this.log.warn({ from: prev.state.path, to: next.state.path }, 'state.path changes take effect at the next restart');
    for (const listener of this.listeners.values()) {
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
    await Promise.all([...this.listeners.values()].map((l) => l.stop()));
    this.listeners.clear();
    for (const s of [...this.sessions]) s.shutdown();
    const deadline = Date.now() + graceMs;
    while (this.sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const s of [...this.sessions]) s.abort('shutdown');
    this.hold.close();
    this.engine?.release();
    this.engine = undefined;
    this.cache.stop();
    this.store.close();
  }
}
