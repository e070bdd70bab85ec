// Pure: the `cluster.redis` config → ioredis options (URL with auth and TLS, or Sentinels + master name), and the config checks for it.
//
// Written once here and used twice: config/load.ts reports `redisProblems` (key path + fix) at
// validation, and src/cluster/shared.ts builds the client from `redisOptions`, which can then
// assume a valid config.

import type { RedisOptions } from 'ioredis';
import type { ClusterConfig } from '../config/schema.js';
import { urlWithoutCredentials } from '../util/redact.js';

/** Reconnect backoff: 100 ms doubling to 5 s, for ever (Redis may be down for hours; etd keeps serving). */
export function reconnectDelay(attempt: number): number {
  return Math.min(5000, 100 * 2 ** Math.min(Math.max(attempt - 1, 0), 6));
}

interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly username?: string;
  readonly password?: string;
  readonly tls: boolean;
  readonly db?: number;
}

/** A redis:// or rediss:// URL, or (sentinels only) host:port; a string says what is wrong. */
export function parseEndpoint(text: string, defaultPort: number, allowBare: boolean): Endpoint | string {
  if (!text.includes('://')) {
    if (!allowBare) return `"${text}" is not a URL; write redis://host:6379 (or rediss:// for TLS)`;
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]/]+))(?::(\d{1,5}))?$/.exec(text);
    if (!m) return `"${text}" is not host:port (an IPv6 address goes in brackets: [2001:db8::1]:26379)`;
    const port = m[3] === undefined ? defaultPort : Number(m[3]);
    if (port < 1 || port > 65535) return `port ${port} is not from 1 to 65535`;
    return { host: (m[1] ?? m[2])!, port, tls: false };
  }
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    return `"${text.replace(/\/\/[^@/]*@/, '//<credentials>@')}" is not a valid URL`;
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') return `scheme "${u.protocol}" is not redis: or rediss: (TLS)`;
  if (u.hostname === '') return 'the URL has no host';
  const dbText = u.pathname.replace(/^\//, '');
  if (dbText !== '' && !/^\d{1,2}$/.test(dbText)) return `"/${dbText}" is not a database number (0-15)`;
  const port = u.port === '' ? defaultPort : Number(u.port);
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port,
    tls: u.protocol === 'rediss:',
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(dbText !== '' ? { db: Number(dbText) } : {}),
  };
}

type RawRedis = { url?: string | undefined; sentinels?: readonly string[] | undefined; name?: string | undefined };

/** The problems of a `cluster.redis` section, each with its key path and the fix. */
export function redisProblems(r: RawRedis, base = 'cluster.redis'): Array<{ path: string; message: string }> {
  const out: Array<{ path: string; message: string }> = [];
  const hasSentinels = r.sentinels !== undefined;
  if (!hasSentinels && r.url === undefined) {
    out.push({ path: `${base}.url`, message: 'set url (redis://[:password@]host:6379) or sentinels plus name' });
  }
  if (hasSentinels && r.name === undefined)
    out.push({ path: `${base}.name`, message: 'sentinels need the master name they monitor (e.g. name: mymaster)' });
  if (!hasSentinels && r.name !== undefined)
    out.push({ path: `${base}.name`, message: 'name is the Sentinel master name: add sentinels, or remove name and use url' });
  if (r.url !== undefined) {
    const e = parseEndpoint(r.url, 6379, false);
    if (typeof e === 'string') out.push({ path: `${base}.url`, message: e });
  }
  (r.sentinels ?? []).forEach((s, i) => {
    const e = parseEndpoint(s, 26379, true);
    if (typeof e === 'string') out.push({ path: `${base}.sentinels[${i}]`, message: e });
  });
  return out;
}

/** TLS options: the system CA store, plus cluster.redis.caFile when set. */
function tlsOf(c: ClusterConfig): { ca?: string } {
  return c.redis.ca !== undefined ? { ca: c.redis.ca } : {};
}

/** ioredis options for a valid config (redisProblems found nothing). Reconnects for ever with backoff; never queues commands while down. */
export function redisOptions(c: ClusterConfig): RedisOptions {
  const r = c.redis;
  const main = r.url === undefined ? undefined : (parseEndpoint(r.url, 6379, false) as Endpoint);
  const common: RedisOptions = {
    keyPrefix: r.keyPrefix,
    connectTimeout: r.connectTimeoutMs,
    commandTimeout: r.commandTimeoutMs,
    // The decision path never waits on Redis: a command while down fails at once instead of queueing.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: reconnectDelay,
    ...(main?.username !== undefined ? { username: main.username } : {}),
    ...(main?.password !== undefined ? { password: main.password } : {}),
    ...(main?.db !== undefined ? { db: main.db } : {}),
    ...(main?.tls ? { tls: tlsOf(c) } : {}),
  };
  if (r.sentinels === undefined) return { ...common, host: main!.host, port: main!.port };
  const sentinels = r.sentinels.map((s) => parseEndpoint(s, 26379, true) as Endpoint);
  const auth = sentinels.find((s) => s.password !== undefined);
  return {
    ...common,
    sentinels: sentinels.map((s) => ({ host: s.host, port: s.port })),
    name: r.name!,
    sentinelRetryStrategy: reconnectDelay,
    ...(auth?.username !== undefined ? { sentinelUsername: auth.username } : {}),
    ...(auth?.password !== undefined ? { sentinelPassword: auth.password } : {}),
    ...(sentinels.some((s) => s.tls) ? { sentinelTLS: tlsOf(c) } : {}),
    // rediss:// in url: the master that the sentinels name is reached over TLS too.
    ...(main?.tls ? { enableTLSForSentinelMode: true } : {}),
  };
}

/** Where the cluster connects, for logs and status: never the password. */
export function redisWhere(c: ClusterConfig): string {
  const r = c.redis;
  // A Sentinel may be written host:port (not a URL: left as it is, it has no credentials).
  const show = (s: string): string => (s.includes('//') ? urlWithoutCredentials(s) : s);
  if (r.sentinels !== undefined) return `sentinel ${r.name} via ${r.sentinels.map(show).join(', ')}`;
  return show(r.url ?? '');
}
