// GET /v1/stats: counters since start — accepted, verdicts, early talkers per action, relayed, bytes.

import { type Static, Type } from '@sinclair/typebox';
import type { Reputation } from '../../reputation/lookup.js';
import type { RoutePlugin } from '../context.js';

function reputationStats(r: Reputation): StatsBody['reputation'] {
  const c = r.counters;
  const o = (m: Map<string, number>) => Object.fromEntries(m);
  return {
    queries: o(c.queries),
    hits: o(c.hits),
    timeouts: o(c.timeouts),
    errors: o(c.errors),
    refusedAnswers: o(c.refused),
    overflow: c.overflow,
    refused: c.refusedClients,
    allowlisted: c.allowlistedClients,
    fromPeers: c.fromPeers,
    inFlight: r.queriesInFlight,
  };
}

const Count = (description: string) => Type.Integer({ minimum: 0, description });

export const StatsBody = Type.Object({
  startedAt: Type.String({ description: 'ISO 8601 time the counters started' }),
  uptimeSeconds: Type.Number(),
  accepted: Count('connections accepted'),
  passed: Count('sessions that waited for the greeting and were relayed (verdict passed)'),
  relayed: Count('sessions that reached the relay'),
  earlyTalkers: Type.Object(
    {
      total: Count('all early talkers'),
      drop: Count('dropped'),
      reject: Count('rejected with the 5xx reply'),
      log: Count('logged and passed'),
    },
    { description: 'clients that talked before the greeting, by the action taken' },
  ),
  protocolTests: Type.Object(
    {
      pipelining: Count('a command before the reply to the one before, PIPELINING not offered (RFC 2920)'),
      non_smtp_command: Count('a non-SMTP command (detection.protocol.nonSmtpCommand.commands)'),
      bare_newline: Count('a command line ending in LF without CR'),
    },
    { description: 'sessions a protocol test caught during the relay (any action), by test; verdicts.protocol counts those it ended' },
  ),
  noServer: Count('sessions refused with 421 because no backend could take them'),
  limitRejections: Count('connections refused with 421 because a limit was hit'),
  limits: Type.Object(
    {
      max_connections: Count('limits.maxConnections'),
      max_held: Count('limits.maxHeld'),
      per_client: Count('limits.perClient'),
      // Absent with `workers` > 1 until the engine threads replace the JS worker threads (issue 23): src/workers/ sums the other three.
      per_client_rate: Type.Optional(Count('limits.rate (absent with workers > 1 for now: the worker threads do not sum it)')),
    },
    { description: 'limit rejections by limit' },
  ),
  clientGone: Count('clients that hung up during the window'),
  shutdown: Count('held connections ended by a shutdown'),
  verdicts: Type.Record(Type.String(), Type.Integer(), { description: 'ended sessions by verdict' }),
  bytes: Type.Object({ fromClient: Count('bytes received from clients'), toClient: Count('bytes sent to clients') }),
  now: Type.Object({ held: Count('held now'), relaying: Count('relayed now') }),
  reputation: Type.Object(
    {
      queries: Type.Record(Type.String(), Type.Integer(), { description: 'DNSBL queries sent, by zone' }),
      hits: Type.Record(Type.String(), Type.Integer(), { description: 'connections a list matched, by list name' }),
      timeouts: Type.Record(Type.String(), Type.Integer(), { description: 'queries not answered within reputation.timeout, by zone' }),
      errors: Type.Record(Type.String(), Type.Integer(), { description: 'queries that failed, by zone' }),
      refusedAnswers: Type.Record(Type.String(), Type.Integer(), { description: '127.255.255.x answers (refused query), by zone' }),
      overflow: Count('queries not sent because reputation.maxInFlight were out'),
      refused: Count('connections refused by score (verdict dnsbl)'),
      allowlisted: Count('connections let in at once by score'),
      fromPeers: Count("zone answers taken from other gateways (cluster) before this gateway's own query answered"),
      inFlight: Count('queries out now'),
    },
    { description: 'DNSBL/DNSWL lookups (reputation:)' },
  ),
});
export type StatsBody = Static<typeof StatsBody>;

export const statsRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/v1/stats',
    { schema: { summary: 'counters since start', tags: ['status'], response: { 200: StatsBody } } },
    async (): Promise<StatsBody> => {
      const s = deps.app.stats.snapshot();
      const et = s.earlyTalkers;
      return {
        startedAt: s.startedAt,
        uptimeSeconds: Math.round((Date.now() - deps.app.stats.startedAt) / 100) / 10,
        accepted: s.accepted,
        passed: s.verdicts.passed,
        relayed: s.relayed,
        earlyTalkers: { total: et.drop + et.reject + et.log, drop: et.drop, reject: et.reject, log: et.log },
        protocolTests: s.protocolTests,
        noServer: s.verdicts.no_server,
        limitRejections: s.verdicts.limit,
        limits: s.limits,
        clientGone: s.verdicts.client_gone,
        shutdown: s.verdicts.shutdown,
        verdicts: s.verdicts,
        bytes: s.bytes,
        now: { held: s.held, relaying: s.relaying },
        reputation: reputationStats(deps.app.reputation),
      };
    },
  );
};
