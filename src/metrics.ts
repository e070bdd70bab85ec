// Prometheus metrics: a private prom-client registry fed by session summaries and backend state changes, plus gauges read at scrape time.

import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { App } from './app.js';
import type { SessionSummary } from './proxy/protocol.js';
import { registerReputationMetrics } from './reputation/metrics.js';

/** Early talk happens within the window: from a few ms (bots) to the whole window (up to ~30 s). */
const EARLY_TALK_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30];
/** Upstream connects: sub-ms on a LAN, up to the connect timeout (default 5 s). */
const CONNECT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export interface MetricsOptions {
  readonly version: string;
  /** Node process metrics (CPU, memory, event loop lag, GC); they cannot be unregistered, so tests may leave them off. */
  readonly processMetrics?: boolean;
}

/**
 * Counters come from the same events as the App's Stats (session summaries), and the few that
 * Stats counts elsewhere (accepted, relayed) are read from Stats at scrape time, so /metrics and
 * /v1/stats always agree.
 */
export class Metrics {
  readonly registry = new Registry();
  private closed = false;
  private readonly stopReputation: () => void;
  private readonly connections: Counter<'listener' | 'verdict'>;
  private readonly earlyTalkers: Counter<'listener' | 'action'>;
  private readonly protocolTests: Counter<'listener' | 'test' | 'action'>;
  private readonly earlyTalkDelay: Histogram<'listener'>;
  private readonly connectTime: Histogram<'server'>;
  private readonly bytes: Counter<'direction'>;
  private readonly transitions: Counter<'server' | 'to'>;

  constructor(app: App, opts: MetricsOptions) {
    const registers = [this.registry];
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });

    new Gauge({ name: 'etd_build_info', help: 'etd version (always 1)', labelNames: ['version'], registers }).set(
      { version: opts.version },
      1,
    );
    this.connections = new Counter({
      name: 'etd_connections_total',
      help: 'connections that ended, by listener and verdict (passed, early_talker, protocol, no_server, limit, denied, client_gone, shutdown, dnsbl, error)',
      labelNames: ['listener', 'verdict'],
      registers,
    });
    this.earlyTalkers = new Counter({
      name: 'etd_early_talkers_total',
      help: 'clients that talked before the greeting, by listener and the action taken (drop, reject, log)',
      labelNames: ['listener', 'action'],
      registers,
    });
    this.protocolTests = new Counter({
      name: 'etd_protocol_tests_total',
      help: 'sessions a protocol test caught during the relay, by listener, test (pipelining, non_smtp_command, bare_newline) and action (log, reject, drop)',
      labelNames: ['listener', 'test', 'action'],
      registers,
    });
    this.earlyTalkDelay = new Histogram({
      name: 'etd_early_talk_delay_seconds',
      help: 'time from accept to the first byte of an early talker',
      labelNames: ['listener'],
      buckets: EARLY_TALK_BUCKETS,
      registers,
    });
    this.connectTime = new Histogram({
      name: 'etd_upstream_connect_seconds',
      help: 'time to connect to the backend server that took the session',
      labelNames: ['server'],
      buckets: CONNECT_BUCKETS,
      registers,
    });
    this.bytes = new Counter({
      name: 'etd_bytes_total',
      help: 'bytes relayed, by direction (from_client, to_client), counted when a session ends',
      labelNames: ['direction'],
      registers,
    });
    // Both directions are present from the first scrape, so rate() has a starting point.
    this.bytes.inc({ direction: 'from_client' }, 0);
    this.bytes.inc({ direction: 'to_client' }, 0);
    this.transitions = new Counter({
      name: 'etd_backend_transitions_total',
      help: 'backend state changes, by server and new state (up, down, drain, maint)',
      labelNames: ['server', 'to'],
      registers,
    });

    const stats = app.stats;
    new Counter({
      name: 'etd_accepted_total',
      help: 'connections accepted by the listeners',
      registers,
      collect() {
        this.reset();
        this.inc(stats.accepted);
      },
    });
    new Counter({
      name: 'etd_relayed_total',
      help: 'sessions that reached the relay (greeting passed on)',
      registers,
      collect() {
        this.reset();
        this.inc(stats.relayed);
      },
    });
    new Counter({
      name: 'etd_limit_rejections_total',
      help: 'connections refused with 421 because a limit was hit, by limit (max_connections, max_held, per_client, per_client_rate)',
      labelNames: ['limit'],
      registers,
      collect() {
        this.reset();
        for (const [limit, n] of Object.entries(stats.limits)) this.inc({ limit }, n);
      },
    });
    new Gauge({
      name: 'etd_stress',
      help: 'whether the stress window applies to new connections now (1 = yes)',
      registers,
      collect() {
        this.set(app.stressed ? 1 : 0);
      },
    });
    new Gauge({
      name: 'etd_held_connections',
      help: 'connections held in the silent window now',
      registers,
      collect() {
        this.set(stats.held);
      },
    });
    new Gauge({
      name: 'etd_sessions_active',
      help: 'sessions being relayed now',
      registers,
      collect() {
        this.set(stats.relaying);
      },
    });
    new Gauge({
      name: 'etd_engine_fds',
      help: 'file descriptors the native session engine owns now (listeners, clients, upstreams; 0 without it)',
      registers,
      collect() {
        this.set(app.engineCounts()?.fds ?? 0);
      },
    });
    new Gauge({
      name: 'etd_engine_buffered_bytes',
      help: 'bytes the native engine holds in relay, reply and early-talk buffers now (bounded per connection: docs/engine.md)',
      registers,
      collect() {
        this.set(app.engineCounts()?.bufferedBytes ?? 0);
      },
    });
    new Counter({
      name: 'etd_engine_event_errors_total',
      help: 'native engine events whose handler threw (each cause logged once; the engine keeps serving)',
      registers,
      collect() {
        const c = app.engineCounts();
        this.reset();
        if (c) this.inc(c.handlerErrors + c.callbackErrors);
      },
    });
    // Native engine threads (config workers:).
    const workerRows = () => app.threads().rows;
    new Gauge({
      name: 'etd_worker_sessions',
      help: 'connections (held, relaying, or being answered) of each engine thread now',
      labelNames: ['worker'],
      registers,
      collect() {
        this.reset();
        for (const w of workerRows()) this.set({ worker: String(w.thread) }, w.connections);
      },
    });
    new Counter({
      name: 'etd_worker_cpu_seconds_total',
      help: 'CPU time (user + system) of each engine thread since it (re)started (the decisions run on the JS thread: process_cpu_seconds_total)',
      labelNames: ['worker'],
      registers,
      collect() {
        this.reset();
        for (const w of workerRows()) this.inc({ worker: String(w.thread) }, w.cpuMs / 1000);
      },
    });
    new Counter({
      name: 'etd_worker_restarts_total',
      help: 'engine threads restarted after they died',
      registers,
      collect() {
        this.reset();
        this.inc(app.threads().restarts);
      },
    });
    new Counter({
      name: 'etd_sessions_lost_total',
      help: 'connections (held or relaying) lost with engine threads that died (each also ends with verdict error, cause engine_thread_died)',
      registers,
      collect() {
        this.reset();
        this.inc(app.threads().lost);
      },
    });
    const pool = app.pool;
    new Gauge({
      name: 'etd_backend_up',
      help: 'whether the backend server takes new sessions (1 = up; 0 = down, drain or maint)',
      labelNames: ['server'],
      registers,
      collect() {
        // Reset first: servers removed by a reload must disappear from the scrape.
        this.reset();
        for (const s of pool.list()) this.set({ server: s.name }, s.state === 'up' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'etd_backend_active_sessions',
      help: 'sessions connected to each backend server now',
      labelNames: ['server'],
      registers,
      collect() {
        this.reset();
        for (const s of pool.list()) this.set({ server: s.name }, s.active);
      },
    });

    this.stopReputation = registerReputationMetrics(this.registry, app.reputation);
    new Gauge({
      name: 'etd_cluster_up',
      help: 'whether Redis (cluster.redis) answers now (1 = up; 0 = down, or no cluster configured)',
      registers,
      collect() {
        this.set(app.cluster?.up ? 1 : 0);
      },
    });
    new Counter({
      name: 'etd_cluster_errors_total',
      help: 'Redis errors, by operation (connect, lookup, write, sync, subscribe); etd serves from local state meanwhile',
      labelNames: ['op'],
      registers,
      collect() {
        this.reset();
        const cluster = app.cluster;
        if (cluster) for (const [op, n] of Object.entries(cluster.errors)) this.inc({ op }, n);
      },
    });
    new Counter({
      name: 'etd_cluster_lookups_total',
      help: 'shared lookups on a local cache miss, by answer (pass, deny, miss, skipped while down, error)',
      labelNames: ['result'],
      registers,
      collect() {
        this.reset();
        const cluster = app.cluster;
        if (cluster) for (const [result, n] of Object.entries(cluster.lookups)) this.inc({ result }, n);
      },
    });
    new Counter({
      name: 'etd_cluster_rejected_total',
      help: 'peer data read from Redis and skipped (malformed, oversized, or its apply failed), by kind (event, access, cache, dnsbl)',
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset();
        const cluster = app.cluster;
        if (cluster) for (const [kind, n] of Object.entries(cluster.rejects.counts)) this.inc({ kind }, n);
      },
    });
    new Gauge({
      name: 'etd_cluster_pending_writes',
      help: 'writes queued for Redis (kept while it is down, written back when it returns)',
      registers,
      collect() {
        this.set(app.cluster?.status().pendingWrites ?? 0);
      },
    });

    app.observe({ sessionEnded: (s) => this.sessionEnded(s) });
    pool.onChange((c) => {
      if (!this.closed) this.transitions.inc({ server: c.server, to: c.to });
    });
  }

  private sessionEnded(s: SessionSummary): void {
    // App has no way to remove an observer; a closed Metrics just stops counting.
    if (this.closed) return;
    this.connections.inc({ listener: s.listener, verdict: s.verdict });
    if (s.talkedAfterMs !== undefined) {
      // Same rule as Stats.ended: a talker without a recorded action was dropped.
      this.earlyTalkers.inc({ listener: s.listener, action: s.action ?? 'drop' });
      this.earlyTalkDelay.observe({ listener: s.listener }, s.talkedAfterMs / 1000);
    }
    if (s.protocolTest !== undefined)
      this.protocolTests.inc({ listener: s.listener, test: s.protocolTest, action: s.protocolAction ?? 'log' });
    if (s.connectMs !== undefined && s.server !== undefined) this.connectTime.observe({ server: s.server }, s.connectMs / 1000);
    if (s.bytesFromClient) this.bytes.inc({ direction: 'from_client' }, s.bytesFromClient);
    if (s.bytesToClient) this.bytes.inc({ direction: 'to_client' }, s.bytesToClient);
  }

  /** The exposition text (Prometheus text format 0.0.4). */
  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  close(): void {
    this.closed = true;
    this.stopReputation();
  }
}
