// What every API route plugin gets: the typed fastify instance, the shared dependencies, and the common error schema.

import { type Static, Type } from '@sinclair/typebox';
import type {
  FastifyBaseLogger,
  FastifyInstance,
  FastifyPluginAsync,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
} from 'fastify';
import type { Logger } from 'pino';
import type { App } from '../app.js';
import type { Metrics } from '../metrics.js';
import type { EventRing, SseStream } from './events.js';
import type { SecondRing } from './history.js';
import type { TypeBoxProvider } from './validation.js';

declare module 'fastify' {
  // Documentation-only keys read by the OpenAPI builder (the same names @fastify/swagger uses).
  interface FastifySchema {
    summary?: string;
    description?: string;
    tags?: readonly string[];
    /** Response media type when it is not JSON (metrics text, event stream). */
    produces?: string;
    /** Leave this route out of the OpenAPI document. */
    hide?: boolean;
    /** This route answers without the bearer token (health probes). */
    public?: boolean;
  }
}

export type ApiInstance = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  TypeBoxProvider
>;

/** Dependencies shared by the route plugins; built once by startApi. */
export type RouteDeps = {
  readonly app: App;
  readonly version: string;
  readonly log: Logger;
  /** Re-reads and applies the config file; throws an EtdError (ETD_ERR_CONFIG_*) and changes nothing on a bad file. */
  readonly reload: () => Promise<void>;
  readonly events: EventRing;
  /** Per-second aggregates of the last hour (GET /v1/history, the dashboard's charts). */
  readonly history: SecondRing;
  /** The config file, for the doctor's fix commands ("FILE" when unknown). */
  readonly configFile: string;
  readonly metrics: Metrics;
  /** Live SSE streams, so shutdown can end them (they would otherwise hold the server open). */
  readonly streams: Set<SseStream>;
  readonly sse: { readonly maxBufferedBytes: number; readonly heartbeatMs: number; readonly maxClients: number };
  /** The OpenAPI document, built from the registered routes. */
  readonly openapi: () => unknown;
};

export type RoutePlugin = FastifyPluginAsync<RouteDeps, RawServerDefault, TypeBoxProvider>;

/** Every error response: a sentence for a person, and an ETD_ERR_* code when one applies. */
export const ErrorBody = Type.Object({
  error: Type.String({ description: 'what is wrong, in words' }),
  code: Type.Optional(Type.String({ description: 'an ETD_ERR_* code (see docs/errors.md), when one applies' })),
  problems: Type.Optional(
    Type.Array(Type.Object({ path: Type.String(), message: Type.String() }), { description: 'config problems, one per key path' }),
  ),
});

export type ErrorBody = Static<typeof ErrorBody>;

/** An error with its HTTP status and JSON body; the error handler sends it as it is. */
export class ApiError extends Error {
  readonly statusCode: number;
  readonly body: ErrorBody;
  constructor(statusCode: number, message: string, extra: Omit<ErrorBody, 'error'> = {}) {
    super(message);
    this.name = 'ApiError';
    this.statusCode = statusCode;
    this.body = { error: message, ...extra };
  }
}
