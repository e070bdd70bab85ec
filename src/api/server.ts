// The local management API: fastify with one route plugin per resource, bearer-token auth, JSON errors, TCP or unix socket.

import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import Fastify, { type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { App } from '../app.js';
import type { ApiConfig } from '../config/schema.js';
import { describeError, EtdError } from '../errors.js';
import { Metrics } from '../metrics.js';
import { isLoopback, urlHost } from '../util/address.js';
import { listenHint } from '../util/errno.js';
import { checkHost, checkOrigin, type ListenerSide } from './browserGuard.js';
import { ApiError, type RouteDeps } from './context.js';
import { EventRing, type SseStream } from './events.js';
import { SecondRing } from './history.js';
import { jsonNesting } from './jsonDepth.js';
import { buildOpenApi, type RouteRecord } from './openapi.js';
import { accessRoutes } from './routes/access.js';
import { backendRoutes } from './routes/backends.js';
import { cacheRoutes } from './routes/cache.js';
import { clientRoutes } from './routes/clients.js';
import { configRoutes } from './routes/config.js';
import { doctorRoutes } from './routes/doctor.js';
import { eventRoutes } from './routes/events.js';
import { healthRoutes } from './routes/health.js';
import { historyRoutes } from './routes/history.js';
import { metricsRoutes } from './routes/metrics.js';
import { reloadRoutes } from './routes/reload.js';
import { reputationRoutes } from './routes/reputation.js';
import { sessionRoutes } from './routes/sessions.js';
import { statsRoutes } from './routes/stats.js';
import { statusRoutes } from './routes/status.js';
import { uiRoutes } from './routes/ui.js';
import { type TypeBoxProvider, typeboxValidatorCompiler } from './validation.js';

export interface ApiDeps {
  readonly app: App;
  readonly version: string;
  readonly log: Logger;
  /** Re-reads the config file, validates, applies; throws EtdError ETD_ERR_CONFIG_* leaving the running config. */
  reload(): Promise<void>;
  /** The config file, named in the doctor's fix commands (`etd rules apply -c FILE`). */
  readonly configFile?: string;
  /** Tuning, mostly for tests; the defaults suit production. */
  readonly options?: ApiOptions;
}

export interface ApiOptions {
  /** Session summaries kept for GET /v1/events (default 1000). */
  readonly eventCapacity?: number;
  /** Unsent bytes an event-stream client may fall behind before it is dropped (default 1 MiB). */
  readonly sseMaxBufferedBytes?: number;
  /** Keep-alive comment interval on event streams (default 15 s). */
  readonly sseHeartbeatMs?: number;
  /** Concurrent event streams (default 32). */
  readonly sseMaxClients?: number;
  /** Seconds of per-second aggregates kept for GET /v1/history and the dashboard (default 3600). */
  readonly historySeconds?: number;
  /** Node process metrics on /metrics (default true). */
  readonly processMetrics?: boolean;
  /** Time a client has to send its request headers (default 10 s): a slow-headers client cannot hold a connection. */
  readonly headersTimeoutMs?: number;
  /** Time a client has to send its whole request, body included (default 30 s). */
  readonly requestTimeoutMs?: number;
  /** Idle time between requests on a keep-alive connection (default 5 s). */
  readonly keepAliveTimeoutMs?: number;
  /** Socket inactivity that closes a connection (default 60 s, above the event streams' heartbeat). */
  readonly idleTimeoutMs?: number;
  /** How often node checks the header and request timeouts (default 1 s; node's own is 30 s). */
  readonly timeoutCheckMs?: number;
}

export interface ApiHandle {
  /** http://address:port, or unix:/path for a unix socket. */
  readonly url: string;
  close(): Promise<void>;
}

/** Request bodies are small JSON objects; anything large is a mistake or an attack. */
const BODY_LIMIT = 64 * 1024;

const sha256 = (s: string) => crypto.createHash('sha256').update(s, 'utf8').digest();

/**
 * The Authorization header against the token. Both sides are hashed first so the comparison is
 * constant-time whatever the lengths (timingSafeEqual needs equal lengths).
 */
function checkToken(header: string | undefined, want: Buffer): 'ok' | 'missing' | 'wrong' {
  const m = /^Bearer +(\S+) *$/i.exec(header ?? '');
  if (!m) return 'missing';
  return crypto.timingSafeEqual(sha256(m[1]!), want) ? 'ok' : 'wrong';
}

/**
 * A socket file left by a process that died is removed; one that something still listens on is
 * not (two etd instances must not steal each other's API), and neither is a file of another kind.
 */
async function prepareSocketPath(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = await fs.promises.lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new EtdError('ETD_ERR_API', `API socket ${path}: cannot inspect it: ${describeError(e)}`, {
      hint: 'check the permissions of its directory',
      cause: e,
    });
  }
  if (!st.isSocket()) {
    throw new EtdError('ETD_ERR_API', `API socket ${path} exists and is not a socket`, {
      hint: 'remove that file or choose another api.address',
    });
  }
  const state = await new Promise<'live' | 'stale' | string>((resolve) => {
    const probe = net.connect(path);
    const timer = setTimeout(() => {
      probe.destroy();
      resolve('live'); // accepted but slow, or a full backlog: someone is there
    }, 1000);
    probe.once('connect', () => {
      clearTimeout(timer);
      probe.destroy();
      resolve('live');
    });
    probe.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(e.code === 'ECONNREFUSED' ? 'stale' : (e.code ?? e.message));
    });
  });
  if (state === 'live') {
    throw new EtdError('ETD_ERR_API', `API socket ${path}: another process is listening on it`, {
      hint: 'is another etd running with the same api.address? stop it or choose another path',
    });
  }
  if (state !== 'stale')
    throw new EtdError('ETD_ERR_API', `API socket ${path}: cannot probe it: ${state}`, { hint: 'check its permissions' });
  await fs.promises.unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT')
      throw new EtdError('ETD_ERR_API', `API socket ${path}: cannot remove the stale socket: ${e.code}`, { cause: e });
  });
}

function apiListenHint(code: string | undefined, unix: boolean): string {
  if (unix && code === 'EACCES') return 'etd cannot create the socket there; check the directory permissions';
  if (code === 'ENOENT') return 'the directory of the socket does not exist; create it (e.g. systemd RuntimeDirectory=etd)';
  return listenHint(code, 'api.port') ?? 'check api.address and api.port';
}

/** Starts the API. Rejects with ETD_ERR_API when it cannot listen or would be exposed without a token. */
export async function startApi(config: ApiConfig, deps: ApiDeps): Promise<ApiHandle> {
  const unix = config.address.startsWith('/');
  const token = config.token;
  if (!unix && !isLoopback(config.address) && token === undefined) {
    // The loader refuses this config already; this is the last line, for callers that build ApiConfig themselves.
    throw new EtdError('ETD_ERR_API', `the API would listen on ${config.address}, which is not loopback, without a token`, {
      hint: 'set api.token or api.tokenFile (e.g. openssl rand -hex 32), or bind it to 127.0.0.1',
    });
  }
  const log = deps.log.child({ component: 'api' });
  const o = deps.options ?? {};
  const events = new EventRing(o.eventCapacity ?? 1000);
  let closed = false;
  // App has no way to remove an observer, so a closed API just stops recording.
  // The last hour per second: sessions as they end, the live counts sampled each second.
  const history = new SecondRing((o.historySeconds ?? 3600) + 1);
  deps.app.observe({
    sessionEnded: (s) => {
      if (closed) return;
      events.push(s);
      history.record(Date.now(), s);
    },
  });
  const sampler = setInterval(() => history.sample(Date.now(), deps.app.stats.held, deps.app.stats.relaying), 1000);
  sampler.unref();
  history.sample(Date.now(), deps.app.stats.held, deps.app.stats.relaying);
  const metrics = new Metrics(deps.app, { version: deps.version, processMetrics: o.processMetrics ?? true });
  const streams = new Set<SseStream>();
  const routes: RouteRecord[] = [];
  let openapiDoc: unknown;

  /** Deeper JSON bodies are refused with 400 (none of etd's request bodies nests more than 3 levels). */
  const MAX_JSON_NESTING = 32;
  const headersTimeout = o.headersTimeoutMs ?? 10_000;
  const requestTimeout = Math.max(o.requestTimeoutMs ?? 30_000, headersTimeout);
  const api = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    // Bounded connections and time: a client that opens many, or sends its request slowly, or
    // sits idle, cannot take the API away from the operator.
    http: { headersTimeout, requestTimeout, connectionsCheckingInterval: o.timeoutCheckMs ?? 1000 },
    requestTimeout,
    keepAliveTimeout: o.keepAliveTimeoutMs ?? 5000,
    connectionTimeout: o.idleTimeoutMs ?? 60_000,
    // Event streams and keep-alive connections must not hold a shutdown or a restart open.
    forceCloseConnections: true,
    frameworkErrors: (err: FastifyError, _req: FastifyRequest, reply: FastifyReply) => {
      void reply.code(err.statusCode && err.statusCode < 500 ? err.statusCode : 400).send({ error: err.message });
    },
  }).withTypeProvider<TypeBoxProvider>();

  // Bodies are JSON; fastify's default text/plain parser would turn a form-ish body into a string.
  api.removeContentTypeParser('text/plain');
  // JSON bodies keep fastify's own parser (prototype-poisoning checks included) behind a depth
  // limit: a body nested thousands of levels deep would overflow the validator's stack (a 500).
  const parseJson = api.getDefaultJsonParser('error', 'error');
  api.removeContentTypeParser('application/json');
  api.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8');
    if (jsonNesting(text, MAX_JSON_NESTING) > MAX_JSON_NESTING) {
      done(
        Object.assign(new Error(`the JSON body nests deeper than ${MAX_JSON_NESTING} levels; etd's request bodies are flat objects`), {
          statusCode: 400,
        }),
        undefined,
      );
      return;
    }
    parseJson(req, text, done);
  });
  api.setValidatorCompiler(typeboxValidatorCompiler);
  // Response schemas document the API (and type the handlers); they must not silently drop
  // fields the way fast-json-stringify does with undeclared properties.
  api.setSerializerCompiler(() => (data: unknown) => JSON.stringify(data));

  api.addHook('onRoute', (r) => {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    for (const method of methods) routes.push({ method: String(method), url: r.url, schema: r.schema });
  });

  api.server.maxConnections = config.maxConnections ?? 64;

  // Before the token: a browser's request is refused for where it comes from, whatever it carries.
  const allowedHosts = config.allowedHosts ?? [];
  api.addHook('onRequest', async (req, reply) => {
    const side: ListenerSide = unix
      ? { address: undefined, port: undefined }
      : { address: req.socket.localAddress, port: req.socket.localPort };
    const header = (name: string): string | undefined => {
      const v = req.headers[name];
      return Array.isArray(v) ? v.join(',') : v;
    };
    const host = checkHost(header('host'), side, allowedHosts);
    const verdict = host.ok
      ? checkOrigin(req.method, header('host'), header('origin'), header('sec-fetch-site'), side, allowedHosts)
      : host;
    if (verdict.ok) return;
    log.warn(
      { client: req.ip, method: req.method, url: req.url.slice(0, 200), status: verdict.status },
      `API request refused: ${verdict.reason}`,
    );
    return reply.code(verdict.status).send({ error: verdict.reason });
  });

  if (token !== undefined) {
    const want = sha256(token);
    api.addHook('onRequest', async (req, reply) => {
      if (req.routeOptions.schema?.public) return;
      const result = checkToken(req.headers.authorization, want);
      if (result === 'ok') return;
      log.warn({ client: req.ip, method: req.method, url: req.url, result }, `API request refused: bearer token ${result}`);
      return reply
        .code(401)
        .header('www-authenticate', result === 'wrong' ? 'Bearer realm="etd", error="invalid_token"' : 'Bearer realm="etd"')
        .send({
          error:
            result === 'missing'
              ? 'this API needs a bearer token: send "Authorization: Bearer <api.token>"'
              : 'the bearer token is wrong; use the value of api.token (or the contents of api.tokenFile)',
        });
    });
  }

  api.addHook('onResponse', async (req, reply) => {
    log.debug({ method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'api request');
  });

  api.setErrorHandler((err: FastifyError | ApiError, req, reply) => {
    if (err instanceof ApiError) {
      if (err.statusCode >= 500) log.error({ method: req.method, url: req.url, err: err.message }, 'API request failed');
      return reply.code(err.statusCode).send(err.body);
    }
    const status = err.statusCode ?? 500;
    if (status >= 400 && status < 500) {
      // fastify's own 4xx (bad JSON, wrong content type, body too large): its message says what is wrong.
      return reply.code(status).send({ error: err.message });
    }
    log.error({ method: req.method, url: req.url, err: describeError(err), stack: err.stack }, 'API request failed');
    return reply.code(500).send({ error: `internal error: ${err.message}` });
  });

  api.setNotFoundHandler((req, reply) => {
    void reply
      .code(404)
      .send({ error: `no such endpoint: ${req.method} ${req.url.split('?')[0]}; the endpoints are listed at /openapi.json` });
  });

  api.addHook('preClose', async () => {
    for (const s of [...streams]) s.close();
  });

  const routeDeps: RouteDeps = {
    app: deps.app,
    version: deps.version,
    log,
    reload: () => deps.reload(),
    events,
    history,
    configFile: deps.configFile ?? 'FILE',
    metrics,
    streams,
    sse: {
      maxBufferedBytes: o.sseMaxBufferedBytes ?? 1024 * 1024,
      heartbeatMs: o.sseHeartbeatMs ?? 15_000,
      maxClients: o.sseMaxClients ?? 32,
    },
    openapi: () => (openapiDoc ??= buildOpenApi(routes, { version: deps.version, bearer: token !== undefined })),
  };
  for (const plugin of [
    statusRoutes,
    statsRoutes,
    historyRoutes,
    backendRoutes,
    sessionRoutes,
    eventRoutes,
    cacheRoutes,
    accessRoutes,
    clientRoutes,
    reputationRoutes,
    reloadRoutes,
    configRoutes,
    doctorRoutes,
    metricsRoutes,
    healthRoutes,
    uiRoutes,
  ]) {
    await api.register(plugin, routeDeps);
  }
  api.get('/openapi.json', { schema: { hide: true, public: true } }, async () => routeDeps.openapi());

  const fail = async (e: unknown): Promise<never> => {
    closed = true;
    clearInterval(sampler);
    metrics.close();
    await api.close().catch(() => undefined);
    throw e;
  };

  let url: string;
  if (unix) {
    await prepareSocketPath(config.address).catch(fail);
    try {
      await api.listen({ path: config.address });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return fail(
        new EtdError('ETD_ERR_API', `cannot listen on the API socket ${config.address}: ${code ?? describeError(e)}`, {
          hint: apiListenHint(code, true),
          cause: e,
        }),
      );
    }
    // Owner and group only: the API changes what the proxy does. (Before the chmod the mode
    // follows the umask; the directory's permissions are what closes that window.)
    await fs.promises.chmod(config.address, 0o660).catch(fail);
    url = `unix:${config.address}`;
  } else {
    try {
      await api.listen({ host: config.address, port: config.port });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return fail(
        new EtdError('ETD_ERR_API', `cannot listen on ${config.address}:${config.port} for the API: ${code ?? describeError(e)}`, {
          hint: apiListenHint(code, false),
          cause: e,
        }),
      );
    }
    const addr = api.server.address() as net.AddressInfo;
    url = `http://${urlHost(addr.address)}:${addr.port}`;
  }
  log.info({ url, auth: token !== undefined ? 'bearer' : 'none' }, 'management API listening');

  return {
    url,
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(sampler);
      metrics.close();
      await api.close();
    },
  };
}
