// GET /v1/sessions: the live sessions (client, phase, server, age, bytes), oldest first, paginated by a cursor.

import { type Static, Type } from '@sinclair/typebox';
import { ListenerSchema } from '../../config/schema.js';
import type { LiveSessionView as Session } from '../../proxy/protocol.js';
import { hostPort } from '../../util/address.js';
import { ErrorBody, type RoutePlugin } from '../context.js';

const PhaseSchema = Type.Union(
  ['held', 'connecting', 'greeting', 'relaying', 'closing', 'closed'].map((p) => Type.Literal(p)),
  { description: 'held: in the silent window; connecting/greeting: to the backend; relaying: passed' },
);

export const SessionBody = Type.Object({
  id: Type.Integer(),
  listener: ListenerSchema.properties.name,
  client: Type.String({ description: 'client address:port' }),
  state: PhaseSchema,
  server: Type.Union([Type.String(), Type.Null()], { description: 'the backend server, once chosen' }),
  startedAt: Type.String({ description: 'ISO 8601' }),
  ageMs: Type.Integer(),
  bytesFromClient: Type.Integer(),
  bytesToClient: Type.Integer(),
});
export type SessionBody = Static<typeof SessionBody>;

export const SessionsQuery = Type.Object(
  {
    limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'page size' }),
    after: Type.Optional(
      Type.Integer({ minimum: 0, description: 'cursor: only sessions with a larger id (the "next" of the previous page)' }),
    ),
    listener: Type.Optional(ListenerSchema.properties.name),
    state: Type.Optional(PhaseSchema),
  },
  { additionalProperties: false },
);

export const SessionsBody = Type.Object({
  total: Type.Integer({ description: 'live sessions matching the filter, on all pages' }),
  sessions: Type.Array(SessionBody),
  next: Type.Union([Type.Integer(), Type.Null()], { description: 'pass as ?after= for the next page; null on the last page' }),
});
export type SessionsBody = Static<typeof SessionsBody>;

function view(s: Session): SessionBody {
  return {
    id: s.id,
    listener: s.listener,
    client: hostPort(s.clientAddress, s.clientPort),
    state: s.phase,
    server: s.server ?? null,
    startedAt: new Date(s.startedAt).toISOString(),
    ageMs: Math.round(s.ageMs),
    bytesFromClient: s.bytesFromClient,
    bytesToClient: s.bytesToClient,
  };
}

export const sessionRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/v1/sessions',
    {
      schema: {
        summary: 'live sessions, oldest first; page with ?after=<next>',
        description: 'A cursor (session id) rather than an offset, so pages stay consistent while sessions come and go.',
        tags: ['sessions'],
        querystring: SessionsQuery,
        response: { 200: SessionsBody, 400: ErrorBody },
      },
    },
    async (req): Promise<SessionsBody> => {
      const { limit, after, listener, state } = req.query;
      // Ids grow in arrival order (one counter on the one decision thread): sorted by id, oldest first.
      const matching: Session[] = [];
      for (const s of await deps.app.liveSessions()) {
        if (listener !== undefined && s.listener !== listener) continue;
        if (state !== undefined && s.phase !== state) continue;
        matching.push(s);
      }
      const page: Session[] = [];
      for (const s of matching) {
        if (after !== undefined && s.id <= after) continue;
        if (page.length === limit) break;
        page.push(s);
      }
      const last = page.at(-1);
      const more = last !== undefined && matching.some((s) => s.id > last.id);
      return { total: matching.length, sessions: page.map(view), next: more ? last.id : null };
    },
  );
};
