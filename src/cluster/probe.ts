// `etd doctor`'s Redis check (I/O): connect once without retrying, write, read back and delete a key under the prefix.

import os from 'node:os';
import { Redis } from 'ioredis';
import type { ClusterConfig } from '../config/schema.js';
import { describeError } from '../errors.js';
import { sharedKey } from './keys.js';
import { redisOptions, redisWhere } from './options.js';

export type RedisProbe =
  | { readonly where: string; readonly ms: number; readonly keyPrefix: string }
  | { readonly where: string; readonly stage: 'connect' | 'write'; readonly error: string; readonly keyPrefix: string };

/** Bounded by connectTimeout + 3 × commandTimeout; never throws. */
export async function probeRedis(c: ClusterConfig): Promise<RedisProbe> {
  const where = redisWhere(c);
  const keyPrefix = c.redis.keyPrefix;
  const t0 = performance.now();
  const client = new Redis({ ...redisOptions(c), retryStrategy: () => null, sentinelRetryStrategy: () => null, lazyConnect: true });
  // The socket's own error (ECONNREFUSED, a TLS failure) says more than connect()'s "Connection is closed".
  let socketError: unknown;
  client.on('error', (e: unknown) => (socketError ??= e));
  try {
    try {
      await client.connect();
    } catch (e) {
      return { where, keyPrefix, stage: 'connect', error: describeError(socketError ?? e) };
    }
    try {
      const key = sharedKey('meta', `doctor:${os.hostname()}:${process.pid}`);
      const value = String(Date.now());
      await client.set(key, value, 'PX', 10_000);
      const back = await client.get(key);
      await client.del(key);
      if (back !== value)
        return { where, keyPrefix, stage: 'write', error: `wrote ${value} under ${keyPrefix}${key}, read back ${String(back)}` };
    } catch (e) {
      return { where, keyPrefix, stage: 'write', error: describeError(e) };
    }
    return { where, keyPrefix, ms: Math.round((performance.now() - t0) * 10) / 10 };
  } finally {
    client.disconnect();
  }
}
