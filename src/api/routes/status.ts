// GET /v1/status: what is running now — version, uptime, listeners and their modes, live connection counts, stress state, engine threads.

import { type Static, Type } from '@sinclair/typebox';
import type { App } from '../../app.js';
import { ListenerSchema } from '../../config/schema.js';
import { hostPort } from '../../util/address.js';
import type { RoutePlugin } from '../context.js';

const Count = Type.Integer({ minimum: 0 });

export const ClusterStatusBody = Type.Object(
  {
    where: Type.String({ description: 'the Redis URL (without password) or the Sentinel master and addresses' }),
    state: Type.Union([Type.Literal('connecting'), Type.Literal('up'), Type.Literal('down')]),
    connected: Type.Boolean({ description: 'true while Redis answers; when false etd serves from its local state' }),
    since: Type.String({ description: 'ISO 8601 time of the last state change' }),
    lastError: Type.Union([Type.String(), Type.Null()], { description: 'the last Redis error (operation: message), null if none' }),
    lagMs: Type.Union([Type.Number(), Type.Null()], { description: 'round trip of the last full sync of the access entries (ms)' }),
    lastSyncAt: Type.Union([Type.String(), Type.Null()], { description: 'ISO 8601 time of the last full sync' }),
    pendingWrites: Type.Integer({ description: 'writes queued for Redis (kept while it is down, written back when it returns)' }),
    droppedWrites: Type.Integer({ description: 'writes dropped because the queue was full during a long outage' }),
    writtenBack: Type.Integer({
      description: 'local entries written back after a reconnect (Redis had lost its data, or this gateway joined)',
    }),
    errors: Type.Object({ connect: Count, lookup: Count, write: Count, sync: Count, subscribe: Count }),
    lookups: Type.Object(
      { pass: Count, deny: Count, miss: Count, skipped: Count, error: Count },
      { description: 'shared lookups on a local cache miss, by answer' },
    ),
  },
  { description: 'shared state over Redis (cluster.redis); null when not configured' },
);

export const WorkerStatusBody = Type.Object(
  {
    index: Type.Integer({ minimum: 0, description: 'the engine thread number (0 .. workers-1)' }),
    threadId: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], {
      description: "the thread's kernel id (as in /proc/PID/task); null while it restarts",
    }),
    state: Type.Union([Type.Literal('running'), Type.Literal('restarting')]),
    sessions: Type.Integer({ minimum: 0, description: 'its connections now (held, relaying, or being answered)' }),
    held: Type.Integer({ minimum: 0, description: 'in the silent window now' }),
    relaying: Type.Integer({ minimum: 0, description: 'relayed to a backend now' }),
    accepted: Type.Integer({ minimum: 0, description: 'connections it accepted since start' }),
    cpuMs: Type.Integer({
      minimum: 0,
      description:
        'CPU time (user + system) of the engine thread since it started (ms); the decisions run on the JS thread, counted in the process CPU',
    }),
    cpuPercent: Type.Number({ minimum: 0, description: 'that CPU time as a share of one core since it started (%)' }),
    restarts: Type.Integer({ minimum: 0, description: 'times it was restarted after it died' }),
  },
  { description: 'one native engine thread (config workers:; docs/workers.md)' },
);
export type WorkerStatusBody = Static<typeof WorkerStatusBody>;

export const StatusBody = Type.Object({
  version: Type.String(),
  startedAt: Type.String({ description: 'ISO 8601 time etd started' }),
  uptimeSeconds: Type.Number(),
  listeners: Type.Array(
    Type.Object({
      name: ListenerSchema.properties.name,
      mode: ListenerSchema.properties.mode,
      state: Type.Union([Type.Literal('listening'), Type.Literal('not listening')]),
      addresses: Type.Array(Type.String(), { description: 'bound addresses (address:port)' }),
    }),
  ),
  connections: Type.Object({
    held: Type.Integer({ description: 'in the silent window now' }),
    relaying: Type.Integer({ description: 'relayed to a backend now' }),
    total: Type.Integer({ description: 'all open sessions (held, connecting, relaying, closing)' }),
  }),
  engine: Type.Union(
    [
      Type.Object({
        connections: Type.Integer({ description: 'client connections the native engine owns (held, relaying, or finishing a reply)' }),
        fds: Type.Integer({ description: 'file descriptors it owns (listeners, clients, upstreams)' }),
        bufferedBytes: Type.Integer({ description: 'bytes in its relay, reply and early-talk buffers now' }),
        deadlines: Type.Integer({ description: 'deadline entries queued (proportional to live connections)' }),
        handlerErrors: Type.Integer({ description: 'event handlers that threw (logged once per cause; the engine keeps serving)' }),
      }),
      Type.Null(),
    ],
    { description: 'the native session engine (docs/engine.md); null before start and after stop' },
  ),
  backends: Type.Object({ up: Type.Integer(), total: Type.Integer() }),
  stress: Type.Object(
    {
      active: Type.Boolean({ description: 'true while the shorter stress window applies to new connections' }),
      windowMs: Type.Integer({ description: 'the window new connections get now' }),
      enterAbove: Type.Integer({ description: 'held connections above which stress starts (detection.stress.above)' }),
      leaveBelow: Type.Integer({ description: 'held connections below which it ends (detection.stress.below)' }),
      changes: Type.Integer({ description: 'times stress started or ended since start' }),
    },
    { description: 'overload protection: with many held connections the window shortens' },
  ),
  cluster: Type.Union([ClusterStatusBody, Type.Null()]),
  workers: Type.Array(WorkerStatusBody, { description: 'the native engine threads, by index (docs/workers.md)' }),
  lostSessions: Type.Integer({
    minimum: 0,
    description:
      'connections lost with engine threads that died since start (each also has a summary: verdict error, cause engine_thread_died)',
  }),
  workerRestarts: Type.Integer({ minimum: 0, description: 'engine threads restarted after they died since start' }),
});
export type StatusBody = Static<typeof StatusBody>;

/** The stress state as the App keeps it, with the thresholds that drive it. */
function stressView(app: App): StatusBody['stress'] {
  const d = app.currentConfig.detection;
  return {
    active: app.stressed,
    windowMs: app.stressed ? d.stress.windowMs : d.windowMs,
    enterAbove: d.stress.above,
    leaveBelow: d.stress.below,
    changes: app.stressChanges,
  };
}

function engineView(app: App): StatusBody['engine'] {
  const c = app.engineCounts();
  if (!c) return null;
  return {
    connections: c.connections,
    fds: c.fds,
    bufferedBytes: c.bufferedBytes,
    deadlines: c.deadlines,
    handlerErrors: c.handlerErrors + c.callbackErrors,
  };
}

/** The engine threads as /v1/status and /metrics show them. */
export function workerRows(app: App): WorkerStatusBody[] {
  return app.threads().rows.map((r) => ({
    index: r.thread,
    threadId: r.running && r.tid > 0 ? r.tid : null,
    state: r.state,
    sessions: r.connections,
    held: r.held,
    relaying: r.relaying,
    accepted: r.accepted,
    cpuMs: Math.round(r.cpuMs),
    cpuPercent: r.upMs > 0 ? Math.round((r.cpuMs / r.upMs) * 1000) / 10 : 0,
    restarts: r.restarts,
  }));
}

export const statusRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/v1/status',
    {
      schema: {
        summary: 'version, uptime, listeners, live connection counts, stress state',
        tags: ['status'],
        response: { 200: StatusBody },
      },
    },
    async (): Promise<StatusBody> => {
      const { app } = deps;
      const threads = app.threads();
      const servers = app.pool.list();
      return {
        version: deps.version,
        startedAt: new Date(app.stats.startedAt).toISOString(),
        uptimeSeconds: Math.round((Date.now() - app.stats.startedAt) / 100) / 10,
        listeners: app.listenerList().map((l) => ({
          name: l.config.name,
          mode: l.config.mode,
          state: l.addresses().length > 0 ? ('listening' as const) : ('not listening' as const),
          addresses: l.addresses().map((a) => hostPort(a.address, a.port)),
        })),
        connections: { held: app.stats.held, relaying: app.stats.relaying, total: app.sessions.size },
        engine: engineView(app),
        backends: { up: servers.filter((s) => s.state === 'up').length, total: servers.length },
        stress: stressView(app),
        cluster: app.cluster?.status() ?? null,
        workers: workerRows(app),
        lostSessions: threads.lost,
        workerRestarts: threads.restarts,
      };
    },
  );
};
