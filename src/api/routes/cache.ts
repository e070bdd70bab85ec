// GET /v1/cache, GET and DELETE /v1/cache/{ip}: the pass and deny cache entries, to see and to forget.

import { type Static, Type } from '@sinclair/typebox';
import { addressToBigInt, formatAddress, parseCidr } from '../../config/cidr.js';
import { ApiError, ErrorBody, type RoutePlugin } from '../context.js';

const KindSchema = Type.Union([Type.Literal('pass'), Type.Literal('deny')], {
  description: 'pass: waited for the greeting, skips the window; deny: talked early, turned away at once',
});

export const CacheEntryBody = Type.Object({
  key: Type.String({ description: 'the client address (cache.scope ip), or its IPv4 /24 or IPv6 /64 (cache.scope net)' }),
  kind: KindSchema,
  expires: Type.String({ description: 'ISO 8601 time the entry lapses' }),
});
export type CacheEntryBody = Static<typeof CacheEntryBody>;

export const CacheListBody = Type.Object({
  enabled: Type.Boolean({ description: 'cache.enabled: when false, entries are kept but not consulted or added' }),
  scope: Type.Union([Type.Literal('ip'), Type.Literal('net')]),
  total: Type.Integer({ description: 'live entries matching ?kind, on all pages' }),
  offset: Type.Integer(),
  limit: Type.Integer(),
  entries: Type.Array(CacheEntryBody, { description: 'the entries loaded at start in address order, then newer ones oldest first' }),
});
export type CacheListBody = Static<typeof CacheListBody>;

export const CacheQuery = Type.Object(
  {
    kind: Type.Optional(KindSchema),
    offset: Type.Integer({ minimum: 0, default: 0, description: 'entries to skip' }),
    limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'page size' }),
  },
  { additionalProperties: false },
);

export const CacheParams = Type.Object(
  {
    ip: Type.String({
      minLength: 1,
      maxLength: 64,
      description:
        'a client address (any address: with cache.scope net its network is looked up), or a cache key such as 192.0.2.0/24 or 2001:db8:1:2::/64; URL-encode the "/" as %2F',
    }),
  },
  { additionalProperties: false },
);

/**
 * The path parameter in the cache's own spelling: a canonical address (lower case, compressed IPv6,
 * IPv4-mapped IPv6 as IPv4), or a /24 or /64 network key. Anything else is a 400 naming the field.
 */
export function cacheParam(text: string): string {
  if (text.includes('/')) {
    const c = parseCidr(text);
    if (typeof c === 'string') throw new ApiError(400, `path.ip: ${c}`);
    const want = c.family === 4 ? 24 : 64;
    if (c.prefix !== want) {
      throw new ApiError(
        400,
        `path.ip: "${text}" is not a cache key; keys are addresses, or with cache.scope net an IPv4 /24 or an IPv6 /64 (e.g. 192.0.2.0/24)`,
      );
    }
    return `${formatAddress(c.family, c.network)}/${c.prefix}`;
  }
  const a = addressToBigInt(text);
  if (!a) throw new ApiError(400, `path.ip: "${text}" is not an IPv4 or IPv6 address (or a cache key such as 192.0.2.0/24)`);
  return formatAddress(a.family, a.value);
}

export const cacheRoutes: RoutePlugin = async (api, deps) => {
  const cache = deps.app.cache;

  api.get(
    '/v1/cache',
    {
      schema: {
        summary: 'pass and deny cache entries, paginated',
        description: 'Entries that lapsed but were not swept yet are left out.',
        tags: ['cache'],
        querystring: CacheQuery,
        response: { 200: CacheListBody, 400: ErrorBody },
      },
    },
    async (req): Promise<CacheListBody> => {
      const { kind, offset, limit } = req.query;
      const page = cache.list(offset, limit, kind);
      const config = deps.app.currentConfig.cache;
      return { enabled: config.enabled, scope: config.scope, total: page.total, offset, limit, entries: [...page.entries] };
    },
  );

  const find = (text: string): CacheEntryBody => {
    const key = cacheParam(text);
    const entry = cache.get(key);
    if (!entry) throw new ApiError(404, `no cache entry for ${key} (cache.scope is ${deps.app.currentConfig.cache.scope})`);
    return entry;
  };

  api.get(
    '/v1/cache/:ip',
    {
      schema: {
        summary: 'the cache entry that applies to an address (or a cache key)',
        tags: ['cache'],
        params: CacheParams,
        response: { 200: CacheEntryBody, 400: ErrorBody, 404: ErrorBody },
      },
    },
    async (req) => find(req.params.ip),
  );

  api.delete(
    '/v1/cache/:ip',
    {
      schema: {
        summary: 'forget a cache entry: the client waits the window again (pass) or is no longer refused (deny)',
        tags: ['cache'],
        params: CacheParams,
        response: { 204: Type.Null({ description: 'deleted' }), 400: ErrorBody, 404: ErrorBody },
      },
    },
    async (req, reply) => {
      const entry = find(req.params.ip);
      cache.delete(entry.key);
      deps.log.info({ key: entry.key, kind: entry.kind }, `cache entry ${entry.key} (${entry.kind}) deleted through the API`);
      return reply.code(204).send(null);
    },
  );
};
