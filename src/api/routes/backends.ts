// GET /v1/backends and PATCH /v1/backends/{name}: backend servers and the operator's drain/maint override.

import { type Static, Type } from '@sinclair/typebox';
import type { HealthChecker, LastCheck } from '../../backend/health.js';
import type { Server } from '../../backend/pool.js';
import { ServerSchema } from '../../config/schema.js';
import { ApiError, ErrorBody, type RoutePlugin } from '../context.js';

const CheckBody = Type.Object({
  ok: Type.Boolean(),
  reason: Type.Optional(Type.String({ description: 'why it failed (refused, timeout, bad_greeting, …)' })),
  detail: Type.Optional(Type.String()),
  ms: Type.Number({ description: 'how long the check took' }),
  at: Type.String({ description: 'ISO 8601 time of the result' }),
});
type CheckBody = Static<typeof CheckBody>;

function checkView(c: LastCheck | undefined): CheckBody | null {
  if (!c) return null;
  return {
    ok: c.ok,
    ...(c.reason !== undefined ? { reason: c.reason } : {}),
    ...(c.detail !== undefined ? { detail: c.detail } : {}),
    ms: c.ms,
    at: new Date(c.at).toISOString(),
  };
}

export const BackendBody = Type.Object({
  name: ServerSchema.properties.name,
  address: ServerSchema.properties.address,
  port: ServerSchema.properties.port,
  weight: ServerSchema.properties.weight,
  backup: ServerSchema.properties.backup,
  state: Type.Union([Type.Literal('up'), Type.Literal('down'), Type.Literal('drain'), Type.Literal('maint')], {
    description: 'up/down from health checks; drain/maint set by the operator (no new sessions; they survive a reload)',
  }),
  healthy: Type.Boolean({ description: 'health as last measured, whatever the override' }),
  admin: Type.Union([Type.Literal('drain'), Type.Literal('maint'), Type.Null()], { description: 'the operator override, or null' }),
  active: Type.Integer({ description: 'sessions connected to it now' }),
  total: Type.Integer({ description: 'sessions it has taken since start' }),
  lastReason: Type.String({ description: 'why its health last changed' }),
  check: Type.Union(
    [
      Type.Object({
        checked: Type.Boolean({ description: 'false when not actively checked (check: false, or upstream.health.enabled: false)' }),
        okStreak: Type.Integer(),
        failStreak: Type.Integer(),
        checks: Type.Integer({ description: 'checks run since start' }),
        last: Type.Union([CheckBody, Type.Null()]),
        lastFailure: Type.Union([CheckBody, Type.Null()]),
      }),
      Type.Null(),
    ],
    { description: 'active SMTP health checks of this server' },
  ),
});
export type BackendBody = Static<typeof BackendBody>;

export const BackendListBody = Type.Object({ backends: Type.Array(BackendBody) });
export type BackendListBody = Static<typeof BackendListBody>;

export const BackendParams = Type.Object({ name: ServerSchema.properties.name }, { additionalProperties: false });

export const BackendPatch = Type.Object(
  {
    state: Type.Union([Type.Literal('up'), Type.Literal('drain'), Type.Literal('maint')], {
      description:
        'drain: no new sessions, current ones finish; maint: the same, for maintenance; up: clear the override (health decides again)',
    }),
    reason: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'logged with the change' })),
  },
  { additionalProperties: false },
);

function view(s: Server, health: HealthChecker): BackendBody {
  const h = health.status(s.name);
  return {
    name: s.name,
    address: s.config.address,
    port: s.config.port,
    weight: s.config.weight,
    backup: s.config.backup,
    state: s.state,
    healthy: s.healthy,
    admin: s.admin ?? null,
    active: s.active,
    total: s.total,
    lastReason: s.lastReason,
    check: h
      ? {
          checked: h.checked,
          okStreak: h.okStreak,
          failStreak: h.failStreak,
          checks: h.checks,
          last: checkView(h.last),
          lastFailure: checkView(h.lastFailure),
        }
      : null,
  };
}

export const backendRoutes: RoutePlugin = async (api, deps) => {
  const pool = deps.app.pool;
  const show = (s: Server) => view(s, deps.app.health);
  const find = (name: string): Server => {
    const s = pool.get(name);
    if (!s) {
      const known = pool.list().map((x) => x.name);
      throw new ApiError(404, `no backend named "${name}"; known: ${known.join(', ') || 'none'}`);
    }
    return s;
  };

  api.get(
    '/v1/backends',
    { schema: { summary: 'backend servers with state and session counts', tags: ['backends'], response: { 200: BackendListBody } } },
    async () => ({ backends: pool.list().map(show) }),
  );

  api.get(
    '/v1/backends/:name',
    {
      schema: { summary: 'one backend server', tags: ['backends'], params: BackendParams, response: { 200: BackendBody, 404: ErrorBody } },
    },
    async (req) => show(find(req.params.name)),
  );

  api.patch(
    '/v1/backends/:name',
    {
      schema: {
        summary: 'drain, put in maintenance, or return a backend server to service',
        tags: ['backends'],
        params: BackendParams,
        body: BackendPatch,
        response: { 200: BackendBody, 400: ErrorBody, 404: ErrorBody },
      },
    },
    async (req) => {
      const server = find(req.params.name);
      const { state } = req.body;
      const reason = req.body.reason ?? `set ${state} through the API`;
      const from = server.state;
      pool.setAdmin(server, state === 'up' ? undefined : state, reason);
      deps.log.info({ server: server.name, from, to: server.state, reason }, `backend ${server.name}: operator set ${state}`);
      return show(server);
    },
  );
};
