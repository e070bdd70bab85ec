// GET /v1/reputation/{address}: a client's DNSBL/DNSWL score and each list's answer (from the cache, looked up when missing).

import { type Static, Type } from '@sinclair/typebox';
import { decide } from '../../reputation/score.js';
import { ErrorBody, type RoutePlugin } from '../context.js';
import { clientAddressParam } from '../validation.js';
import { ClientParams } from './clients.js';

export const ReputationBody = Type.Object({
  address: Type.String({ description: 'the address, canonical spelling' }),
  enabled: Type.Boolean({ description: 'false when reputation.dnsbl lists nothing (then no lookups are made)' }),
  score: Type.Integer({ description: 'the sum of the weights of the lists that matched' }),
  decision: Type.Union([Type.Literal('refuse'), Type.Literal('allow'), Type.Literal('window')], {
    description: 'refuse: ≥ reputation.threshold; allow: ≤ reputation.allowThreshold (skips the window); window: the window decides',
  }),
  cached: Type.Boolean({ description: 'true when every answer came from the cache (no query was made for this request)' }),
  lists: Type.Array(
    Type.Object({
      name: Type.String(),
      zone: Type.String(),
      weight: Type.Integer(),
      status: Type.Union(
        ['answer', 'none', 'timeout', 'error', 'overflow'].map((s) => Type.Literal(s)),
        { description: 'answer: A records came back; none: not listed (NXDOMAIN); timeout/error/overflow: no answer, counts 0' },
      ),
      answers: Type.Array(Type.String(), { description: 'the A records the zone answered' }),
      matched: Type.Boolean({ description: 'whether an answer matched the list (its weight counted)' }),
      refused: Type.Boolean({
        description: 'the zone answered 127.255.255.x: the query was refused (a public resolver, no access); counts 0',
      }),
    }),
  ),
});
export type ReputationBody = Static<typeof ReputationBody>;

export const reputationRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/v1/reputation/:address',
    {
      schema: {
        summary: "one client's DNSBL/DNSWL score and each list's answer",
        description:
          'Uses the answer cache; zones without a cached answer are queried now (within reputation.timeout). Counts no connection.',
        tags: ['clients'],
        params: ClientParams,
        response: { 200: ReputationBody, 400: ErrorBody },
      },
    },
    async (req): Promise<ReputationBody> => {
      const address = clientAddressParam('path.address', req.params.address);
      const rep = deps.app.reputation;
      const c = rep.settings;
      if (!rep.enabled) return { address, enabled: false, score: 0, decision: 'window', cached: true, lists: [] };
      const { score, answers, cached } = await rep.inspect(address);
      const hits = new Map(score.hits.map((h) => [h.name, h]));
      return {
        address,
        enabled: true,
        score: score.score,
        decision: decide(score.score, c.threshold, c.allowThreshold),
        cached,
        lists: rep.configuredLists.map((l) => {
          const z = answers.get(l.zone) ?? { status: 'timeout' as const };
          const got = z.status === 'answer' ? [...z.addresses] : [];
          return {
            name: l.name,
            zone: l.zone,
            weight: l.weight,
            status: z.status,
            answers: got,
            matched: hits.has(l.name),
            refused: got.some((x) => x.startsWith('127.255.255.')),
          };
        }),
      };
    },
  );
};
