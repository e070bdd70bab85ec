// GET /v1/events: recent session verdicts from the ring buffer, as JSON or as a live Server-Sent-Events stream.

import { type Static, Type } from '@sinclair/typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ListenerSchema } from '../../config/schema.js';
import { PROTOCOL_TESTS } from '../../proxy/verdict.js';
import { Stats } from '../../stats.js';
import { ApiError, ErrorBody, type RouteDeps, type RoutePlugin } from '../context.js';
import { SseStream } from '../events.js';

// The verdict words, at run time: Stats keeps a counter per Verdict (a Record, so the type
// checker makes it complete), which keeps this list in step when a verdict is added.
const VerdictSchema = Type.Union(Object.keys(new Stats().verdicts).map((v) => Type.Literal(v)));

export const EventBody = Type.Object(
  {
    seq: Type.Integer({ description: 'event number, increasing; the SSE id' }),
    at: Type.String({ description: 'ISO 8601 time the session ended' }),
    id: Type.Integer({ description: 'session id' }),
    listener: Type.String(),
    client: Type.String(),
    verdict: VerdictSchema,
    action: Type.Optional(Type.String()),
    talkedAfterMs: Type.Optional(Type.Number()),
    earlyBytes: Type.Optional(Type.String()),
    protocolTest: Type.Optional(
      Type.Union(
        PROTOCOL_TESTS.map((t) => Type.Literal(t)),
        {
          description: 'a protocol test caught the client during the relay (detection.protocol)',
        },
      ),
    ),
    protocolAction: Type.Optional(Type.String()),
    protocolBytes: Type.Optional(Type.String({ description: 'the offending line, escaped, at most 100 bytes' })),
    server: Type.Optional(Type.String()),
    connectMs: Type.Optional(Type.Number()),
    heldMs: Type.Number(),
    durationMs: Type.Number(),
    bytesFromClient: Type.Integer(),
    bytesToClient: Type.Integer(),
    cause: Type.String(),
  },
  { additionalProperties: true, description: 'the session summary (the log line), numbered' },
);

const Filters = {
  since: Type.Optional(Type.Integer({ minimum: 0, description: 'only events with a larger seq' })),
  verdict: Type.Optional(VerdictSchema),
  listener: Type.Optional(ListenerSchema.properties.name),
};

export const EventsQuery = Type.Object(
  { ...Filters, limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'at most this many, the latest' }) },
  { additionalProperties: false },
);
export const StreamQuery = Type.Object(Filters, { additionalProperties: false });

export const EventsBody = Type.Object({
  lastSeq: Type.Integer({ description: 'the latest seq; poll again with ?since=lastSeq' }),
  events: Type.Array(EventBody, { description: 'oldest first' }),
});
export type EventsBody = Static<typeof EventsBody>;

type StreamFilter = Static<typeof StreamQuery>;

/** Takes the response over for an event stream; replays from Last-Event-ID (or ?since=) when given. */
function stream(deps: RouteDeps, req: FastifyRequest, reply: FastifyReply, q: StreamFilter): void {
  if (req.method === 'HEAD') {
    // A HEAD response has no body: a stream would never send its headers and would hold a slot forever.
    void reply.code(200).header('content-type', 'text/event-stream; charset=utf-8').header('cache-control', 'no-store').send();
    return;
  }
  if (deps.streams.size >= deps.sse.maxClients) {
    throw new ApiError(429, `too many event streams open (${deps.sse.maxClients}); close one or poll GET /v1/events?since=`);
  }
  let since = q.since;
  const lastId = req.headers['last-event-id'];
  if (typeof lastId === 'string' && lastId !== '') {
    if (!/^\d+$/.test(lastId))
      throw new ApiError(400, `header Last-Event-ID: must be an event seq number (got ${JSON.stringify(lastId.slice(0, 40))})`);
    since = Number(lastId);
  }
  reply.hijack();
  const s = new SseStream(
    reply.raw,
    deps.events,
    {
      maxBufferedBytes: deps.sse.maxBufferedBytes,
      heartbeatMs: deps.sse.heartbeatMs,
      ...(since !== undefined ? { since } : {}),
      ...(q.verdict !== undefined ? { verdict: q.verdict } : {}),
      ...(q.listener !== undefined ? { listener: q.listener } : {}),
    },
    (why) => {
      deps.streams.delete(s);
      if (why === 'too_slow') deps.log.warn({ client: req.ip }, 'event stream client dropped: it reads too slowly');
    },
  );
  if (!s.closed) deps.streams.add(s);
}

export const eventRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/v1/events',
    {
      schema: {
        summary: 'recent session verdicts (ring buffer); with "Accept: text/event-stream", a live stream',
        tags: ['events'],
        querystring: EventsQuery,
        response: { 200: EventsBody, 400: ErrorBody },
      },
    },
    async (req, reply) => {
      const { limit, ...filter } = req.query;
      if ((req.headers.accept ?? '').includes('text/event-stream')) {
        stream(deps, req, reply, filter);
        return reply;
      }
      return { lastSeq: deps.events.lastSeq, events: deps.events.recent({ ...filter, limit }) };
    },
  );

  api.get(
    '/v1/events/stream',
    {
      schema: {
        summary: 'live stream of session verdicts (Server-Sent Events, event "session", id = seq)',
        description: 'Reconnects resume after Last-Event-ID from the ring buffer. A client that falls too far behind is disconnected.',
        tags: ['events'],
        produces: 'text/event-stream',
        querystring: StreamQuery,
        response: { 200: Type.String({ description: 'text/event-stream' }), 400: ErrorBody, 429: ErrorBody },
      },
    },
    async (req, reply) => {
      stream(deps, req, reply, req.query);
      return reply;
    },
  );
};
