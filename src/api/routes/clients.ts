// GET /v1/clients/{address}: everything etd would consult about one client — its access-list match and its pass/deny cache entry — and what it would do.

import { type Static, Type } from '@sinclair/typebox';
import { cacheKey } from '../../policy/clientCache.js';
import { ErrorBody, type RoutePlugin } from '../context.js';
import { clientAddressParam } from '../validation.js';
import { AccessEntryBody, accessView } from './access.js';
import { CacheEntryBody } from './cache.js';

export const ClientBody = Type.Object({
  address: Type.String({ description: 'the address, canonical spelling' }),
  cacheKey: Type.String({ description: 'the key its cache entry has (the address, or its /24 or /64 with cache.scope net)' }),
  access: Type.Union([AccessEntryBody, Type.Null()], { description: 'the access entry that matches it (the most specific), or null' }),
  cache: Type.Union([CacheEntryBody, Type.Null()], { description: 'its pass or deny cache entry, or null' }),
  decision: Type.Union([Type.Literal('deny'), Type.Literal('skip'), Type.Literal('window')], {
    description:
      'what a new connection from it gets now (connection limits aside): deny = refused at once, skip = relayed without the window, window = held and watched',
  }),
  reason: Type.String({ description: 'why, in words' }),
});
export type ClientBody = Static<typeof ClientBody>;

export const ClientParams = Type.Object(
  { address: Type.String({ minLength: 1, maxLength: 64, description: 'an IPv4 or IPv6 address' }) },
  { additionalProperties: false },
);

export const clientRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/v1/clients/:address',
    {
      schema: {
        summary: 'one client: its access-list match, its pass/deny cache entry, and what etd would do with its next connection',
        description:
          'Limits (per-client, held, total) are not part of the answer: they depend on the moment. DNSBL/DNSWL scores: GET /v1/reputation/{address}.',
        tags: ['clients'],
        params: ClientParams,
        response: { 200: ClientBody, 400: ErrorBody },
      },
    },
    async (req): Promise<ClientBody> => {
      const address = clientAddressParam('path.address', req.params.address);
      const { app } = deps;
      const config = app.currentConfig.cache;
      const listed = app.access.match(address);
      const entry = app.cache.get(address);
      // The same order as the App's admission: access lists first, then the caches (when enabled).
      let decision: ClientBody['decision'] = 'window';
      let reason = 'no access entry and no cache entry: it waits the window';
      if (listed) {
        decision = listed.list === 'deny' ? 'deny' : 'skip';
        reason = `access.${listed.list} ${accessView(listed).cidr} (${listed.source})`;
      } else if (entry && config.enabled) {
        decision = entry.kind === 'deny' ? 'deny' : 'skip';
        reason = `${entry.kind} cache entry ${entry.key} until ${entry.expires}`;
      } else if (entry) {
        reason = `a ${entry.kind} cache entry exists, but cache.enabled is false: it waits the window`;
      }
      return {
        address,
        cacheKey: cacheKey(address, config.scope),
        access: listed ? accessView(listed) : null,
        cache: entry ?? null,
        decision,
        reason,
      };
    },
  );
};
