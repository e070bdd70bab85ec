// Builds the OpenAPI 3.1 document from the routes' own TypeBox schemas, so the document cannot drift from what is validated.

import { STATUS_CODES } from 'node:http';
import type { FastifySchema } from 'fastify';

export interface RouteRecord {
  readonly method: string;
  readonly url: string;
  readonly schema: FastifySchema | undefined;
}

type Json = Record<string, unknown>;

/** TypeBox schemas carry symbol keys (Kind, Optional); a JSON round trip leaves plain JSON Schema. */
function plain(schema: unknown): Json {
  return JSON.parse(JSON.stringify(schema)) as Json;
}

function parameters(schema: unknown, where: 'path' | 'query'): Json[] {
  if (schema === undefined) return [];
  const s = plain(schema);
  const props = (s.properties ?? {}) as Record<string, Json>;
  const required = new Set((s.required ?? []) as string[]);
  return Object.entries(props).map(([name, p]) => ({
    name,
    in: where,
    required: where === 'path' || required.has(name),
    ...(typeof p.description === 'string' ? { description: p.description } : {}),
    schema: p,
  }));
}

/** fastify's `/v1/backends/:name` is OpenAPI's `/v1/backends/{name}`. */
function openapiPath(url: string): string {
  return url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
}

export function buildOpenApi(routes: readonly RouteRecord[], info: { version: string; bearer: boolean }): Json {
  const paths: Record<string, Record<string, Json>> = {};
  for (const r of routes) {
    const s = r.schema ?? {};
    if (s.hide || r.method === 'HEAD' || r.method === 'OPTIONS') continue;
    const responses: Record<string, Json> = {};
    for (const [code, body] of Object.entries((s.response ?? {}) as Record<string, unknown>)) {
      const media = code === '200' && s.produces ? s.produces : 'application/json';
      const schema = plain(body);
      const description = typeof schema.description === 'string' ? schema.description : (STATUS_CODES[Number(code)] ?? code);
      // 204 has no body (its schema, Type.Null, only carries the description).
      responses[code] = code === '204' ? { description } : { description, content: { [media]: { schema } } };
    }
    if (info.bearer && !s.public) {
      responses['401'] = {
        description: 'missing or wrong bearer token',
        content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
      };
    }
    const op: Json = {
      operationId: `${r.method.toLowerCase()}${r.url.replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ?? '').toUpperCase())}`,
      ...(s.summary ? { summary: s.summary } : {}),
      ...(s.description ? { description: s.description } : {}),
      ...(s.tags ? { tags: [...s.tags] } : {}),
      parameters: [...parameters(s.params, 'path'), ...parameters(s.querystring, 'query')],
      ...(s.body !== undefined ? { requestBody: { required: true, content: { 'application/json': { schema: plain(s.body) } } } } : {}),
      responses,
      ...(info.bearer && s.public ? { security: [] } : {}),
    };
    (paths[openapiPath(r.url)] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'etd management API',
      version: info.version,
      description:
        'Local management API of etd, the SMTP early-talker detection proxy. Errors are JSON: {"error": "...", "code"?: "ETD_ERR_..."}.',
    },
    paths,
    components: {
      schemas: {
        Error: {
          type: 'object',
          required: ['error'],
          properties: { error: { type: 'string' }, code: { type: 'string' } },
        },
      },
      ...(info.bearer
        ? { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'api.token (or the contents of api.tokenFile)' } } }
        : {}),
    },
    ...(info.bearer ? { security: [{ bearer: [] }] } : {}),
  };
}
