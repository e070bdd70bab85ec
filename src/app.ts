// Composition root: builds etd's parts from one Config with explicit dependencies; start, reload, stop in order.

import type net from 'node:net';
import type { Logger } from 'pino';
import type { Config, ListenerConfig } from './config/schema.js';
import { Pool } from './backend/pool.js';
import { HealthChecker } from './backend/health.js';
import { TimerHoldQueue } from './proxy/holdQueue.js';
import { Listener, fmt } from './proxy/listener.js';
import { Session, type SessionContext, type SessionPolicy, type SessionSummary } from './proxy/session.js';
import { createSource } from './proxy/upstream.js';
import { Stats } from './stats.js';
import { normalizeAddress } from './config/cidr.js';

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

function listenerKey(l: ListenerConfig): string {
  return JSON.stringify([l.name, l.address, l.port, l.mode, l.backlog, l.destinations]);
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
  readonly sessions = new Set<Session>();
  private listeners = new Map<string, Listener>();
  private stopping = false;
  /** Connections (held or relayed) per client address, for limits.perClient. */
  private readonly perClient = new Map<string, number>();
  /** True while the held connections are above detection.stress.above (until below .below). */
  stressed = false;
  stressChanges = 0;
  private readonly observers: AppObserver[] = [];

  constructor(
    private config: Config,
    readonly log: Logger,
  ) {
    this.pool = new Pool(config.upstream.servers, config.upstream.balance, { passiveFall: config.upstream.passiveFall });
    this.pool.onChange((c) => this.log.warn({ server: c.server, from: c.from, to: c.to, reason: c.reason }, `server ${c.server} is now ${c.to}`));
    this.health = new HealthChecker(this.pool, config.upstream.health, log);
  }

  get currentConfig(): Config {
    return this.config;
  }

  observe(o: AppObserver): void {
    this.observers.push(o);
  }

  listenerList(): readonly Listener[] {
    return [...this.listeners.values()];
  }

  async start(): Promise<void> {
    this.health.start();
    for (const l of this.config.listeners) await this.startListener(l);
  }

  private makeContext(l: ListenerConfig): ListenerContext {
    const app = this;
    return {
      listener: l.name,
      mode: l.mode,
      log: this.log.child({ listener: l.name }),
      pool: this.pool,
      hold: this.hold,
      source: createSource(this.config.upstream.source),
      normal: policyOf(this.config),
      stress: policyOf(this.config, true),
      get policy() {
        return app.stressed ? this.stress : this.normal;
      },
      sessionStarted(s) {
        app.sessions.add(s);
        app.stats.held++;
        app.perClient.set(s.clientAddress, (app.perClient.get(s.clientAddress) ?? 0) + 1);
        app.checkStress();
      },
      sessionRelaying() {
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

  private async startListener(l: ListenerConfig): Promise<void> {
    const ctx = this.makeContext(l);
    const listener = new Listener(l, ctx, (socket, c) => this.accept(socket, c), this.config.netfilter.tproxyPort);
    await listener.start();
    this.listeners.set(l.name, listener);
  }

  private accept(socket: net.Socket, ctx: SessionContext): void {
    this.stats.accepted++;
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const limits = this.config.limits;
    if (this.sessions.size >= limits.maxConnections) {
      this.refuse(socket, ctx, 'max_connections', '421 4.7.0 Too many connections, try again later');
      return;
    }
    if (this.stats.held >= limits.maxHeld) {
      this.refuse(socket, ctx, 'max_held', '421 4.7.0 Too many connections, try again later');
      return;
    }
    if (limits.perClient > 0) {
      const n = this.perClient.get(normalizeAddress(socket.remoteAddress ?? '')) ?? 0;
      if (n >= limits.perClient) {
        this.refuse(socket, ctx, 'per_client', '421 4.7.0 Too many connections from your address');
        return;
      }
    }
    new Session(socket, ctx).begin();
  }

  /** A limit was hit: 421 and close, with its own summary line. */
  private refuse(socket: net.Socket, ctx: SessionContext, cause: 'max_connections' | 'max_held' | 'per_client', reply: string): void {
    const started = performance.now();
    this.stats.limits[cause]++;
    socket.on('error', () => socket.destroy());
    socket.resume();
    socket.end(`${reply}\r\n`);
    socket.setTimeout(5000, () => socket.destroy());
    const address = normalizeAddress(socket.remoteAddress ?? '');
    this.recordEnd(ctx.log, {
      id: 0,
      listener: ctx.listener,
      client: fmt(address, socket.remotePort ?? 0),
      clientAddress: address,
      verdict: 'limit',
      attempts: 0,
      heldMs: 0,
      durationMs: Math.round(performance.now() - started),
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
    this.config = next;
    this.pool.update(next.upstream.servers, next.upstream.balance);
    this.health.update(next.upstream.health);
    const wanted = new Map(next.listeners.map((l) => [l.name, l]));
    for (const [name, listener] of this.listeners) {
      const want = wanted.get(name);
      if (!want || listenerKey(want) !== listenerKey(listener.config)) {
        await listener.stop();
        this.listeners.delete(name);
      }
    }
    for (const l of next.listeners) {
      const existing = this.listeners.get(l.name);
      if (existing) {
        const ctx = existing.ctx as ListenerContext;
        ctx.normal = policyOf(next);
        ctx.stress = policyOf(next, true);
        if (prev.upstream.source !== next.upstream.source) existing.ctx.source = createSource(next.upstream.source);
      } else {
        await this.startListener(l);
      }
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
  }
}
