// GET /v1/history: the last hour in per-second aggregates (sessions by verdict, early talkers, held, relaying, connect latency), as columns.

import { type Static, Type } from '@sinclair/typebox';
import { VERDICTS } from '../../proxy/verdict.js';
import { ErrorBody, type RoutePlugin } from '../context.js';

const Counts = Type.Array(Type.Integer(), { description: 'one value per second' });
const Gauge = Type.Array(Type.Union([Type.Number(), Type.Null()]), {
  description: 'one value per second; null when there is nothing to show',
});

export const HistoryBody = Type.Object({
  now: Type.Integer({ description: 'unix second of the answer; the seconds returned end just before it' }),
  t: Type.Array(Type.Integer(), { description: 'unix seconds, oldest first' }),
  verdicts: Type.Object(Object.fromEntries(VERDICTS.map((v) => [v, Counts])), {
    description: 'sessions that ended in each second, by verdict',
  }),
  earlyTalkers: Counts,
  held: Type.Array(Type.Union([Type.Integer(), Type.Null()]), {
    description: 'connections in the window, sampled each second (null: not sampled)',
  }),
  relaying: Type.Array(Type.Union([Type.Integer(), Type.Null()]), { description: 'sessions relayed to a backend, sampled each second' }),
  connectMsAvg: Gauge,
  connectMsMax: Gauge,
});
export type HistoryBody = Static<typeof HistoryBody>;

export const HistoryQuery = Type.Object(
  {
    since: Type.Optional(Type.Integer({ minimum: 0, description: 'only seconds after this unix second (poll with the last t you saw)' })),
    seconds: Type.Integer({ minimum: 1, maximum: 3600, default: 3600, description: 'at most this many of the latest seconds' }),
  },
  { additionalProperties: false },
);

export const historyRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/v1/history',
    {
      schema: {
        summary:
          'per-second aggregates of the last hour (in memory, since start): sessions by verdict, early talkers, held, relaying, connect latency',
        tags: ['stats'],
        querystring: HistoryQuery,
        response: { 200: HistoryBody, 400: ErrorBody },
      },
    },
    async (req): Promise<HistoryBody> => {
      const now = Date.now();
      // Seconds before etd started are not history (they would read as an idle hour).
      const started = Math.floor(deps.app.stats.startedAt / 1000) - 1;
      const since = Math.max(req.query.since ?? 0, started);
      return { now: Math.floor(now / 1000), ...deps.history.columns(now, { since, seconds: req.query.seconds }) };
    },
  );
};
