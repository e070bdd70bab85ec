// GET and POST /v1/access, DELETE /v1/access/{cidr}: the allow/deny lists, with runtime entries that persist in the state store.

import { type Static, Type } from '@sinclair/typebox';
import { type Cidr, formatAddress, parseCidr } from '../../config/cidr.js';
import type { AccessEntry } from '../../policy/access.js';
import { ApiError, ErrorBody, type RoutePlugin } from '../context.js';

const ListSchema = Type.Union([Type.Literal('allow'), Type.Literal('deny')], {
  description: 'allow: skips the window; deny: refused at once (access.denyAction: reject with access.denyReply, or drop)',
});

export const AccessEntryBody = Type.Object({
  cidr: Type.String({ description: 'network/prefix, canonical spelling (a single address is a /32 or /128)' }),
  list: ListSchema,
  source: Type.Union([Type.Literal('config'), Type.Literal('runtime')], {
    description: 'config: from the config file (change it there); runtime: added through the API, kept in the state store',
  }),
});
export type AccessEntryBody = Static<typeof AccessEntryBody>;

export const AccessListBody = Type.Object({
  denyAction: Type.Union([Type.Literal('reject'), Type.Literal('drop')]),
  entries: Type.Array(AccessEntryBody, {
    description: 'in match order: the most specific prefix first, deny before allow at equal length',
  }),
});
export type AccessListBody = Static<typeof AccessListBody>;

export const AccessPost = Type.Object(
  {
    cidr: Type.String({
      minLength: 1,
      maxLength: 64,
      description: 'e.g. 192.0.2.0/24, 2001:db8::/32, or one address; host bits must be zero',
    }),
    list: ListSchema,
  },
  { additionalProperties: false },
);

export const AccessPostBody = Type.Composite([
  AccessEntryBody,
  Type.Object({
    replaced: Type.Boolean({ description: 'true when a runtime entry for the same prefix was replaced' }),
    persisted: Type.Boolean({ description: 'false when the state store could not write it: it holds until etd restarts' }),
  }),
]);
export type AccessPostBody = Static<typeof AccessPostBody>;

export const AccessParams = Type.Object(
  { cidr: Type.String({ minLength: 1, maxLength: 64, description: 'the prefix, URL-encoded (192.0.2.0%2F24)' }) },
  { additionalProperties: false },
);

function text(c: Cidr): string {
  return `${formatAddress(c.family, c.network)}/${c.prefix}`;
}

/** An access entry as the API shows it. */
export function accessView(e: AccessEntry): AccessEntryBody {
  return { cidr: text(e.cidr), list: e.list, source: e.source };
}

function parse(field: string, value: string): Cidr {
  const c = parseCidr(value);
  if (typeof c === 'string') throw new ApiError(400, `${field}: ${c}`);
  return c;
}

export const accessRoutes: RoutePlugin = async (api, deps) => {
  const access = deps.app.access;
  const store = deps.app.store;
  const entriesFor = (c: Cidr): readonly AccessEntry[] => [...access.at(c)]; // a copy: adding or removing entries changes the bucket

  api.get(
    '/v1/access',
    { schema: { summary: 'the allow and deny lists, in match order', tags: ['access'], response: { 200: AccessListBody } } },
    async (): Promise<AccessListBody> => ({ denyAction: deps.app.currentConfig.access.denyAction, entries: access.list().map(accessView) }),
  );

  api.post(
    '/v1/access',
    {
      schema: {
        summary: 'add a runtime allow or deny entry (kept in the state store across restarts)',
        description:
          'A runtime entry for the same prefix is replaced; a prefix that the config file lists cannot be overridden here (409).',
        tags: ['access'],
        body: AccessPost,
        response: { 200: AccessPostBody, 201: AccessPostBody, 400: ErrorBody, 409: ErrorBody },
      },
    },
    async (req, reply): Promise<AccessPostBody> => {
      const c = parse('body.cidr', req.body.cidr);
      const same = entriesFor(c);
      const fromConfig = same.find((e) => e.source === 'config');
      if (fromConfig) {
        throw new ApiError(
          409,
          `${text(c)} is in the config file (access.${fromConfig.list}); change it there and reload, it cannot be overridden through the API`,
        );
      }
      const added = access.add(text(c), req.body.list, 'runtime');
      if (typeof added === 'string') throw new ApiError(409, `body.cidr: ${added}`); // the runtime list is full (access.maxEntries)
      store.putAccess(text(c), req.body.list);
      deps.app.cluster?.accessChanged(text(c), req.body.list);
      const replaced = same.length > 0;
      deps.log.info({ cidr: text(c), list: req.body.list, replaced }, `access entry ${text(c)} (${req.body.list}) added through the API`);
      void reply.code(replaced ? 200 : 201);
      return { ...accessView(added), replaced, persisted: store.healthy };
    },
  );

  api.delete(
    '/v1/access/:cidr',
    {
      schema: {
        summary: 'delete a runtime access entry',
        description: 'Entries from the config file are changed in the config file (409 here).',
        tags: ['access'],
        params: AccessParams,
        response: { 204: Type.Null({ description: 'deleted' }), 400: ErrorBody, 404: ErrorBody, 409: ErrorBody },
      },
    },
    async (req, reply) => {
      const c = parse('path.cidr', req.params.cidr);
      const same = entriesFor(c);
      if (!same.some((e) => e.source === 'runtime')) {
        const fromConfig = same.find((e) => e.source === 'config');
        if (fromConfig) {
          throw new ApiError(409, `${text(c)} comes from the config file (access.${fromConfig.list}); remove it there and reload`);
        }
        throw new ApiError(404, `no access entry for ${text(c)}`);
      }
      access.remove(text(c), 'runtime');
      store.deleteAccess(text(c));
      deps.app.cluster?.accessChanged(text(c), undefined);
      deps.log.info({ cidr: text(c) }, `access entry ${text(c)} deleted through the API`);
      return reply.code(204).send(null);
    },
  );
};
