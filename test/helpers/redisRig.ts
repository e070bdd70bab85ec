// An in-process App sharing its state through a real redis-server on loopback, with its API and a second Redis client standing for a peer gateway.

import { Redis } from 'ioredis';
import pino from 'pino';
import { freePort, startRedis, type TestRedis } from '../../lab/redis.js';
import { startApi } from '../../src/api/server.js';
import { App } from '../../src/app.js';
import { validateConfig } from '../../src/config/load.js';
import { waitFor } from './wait.js';

export interface RedisRig {
  readonly redis: TestRedis;
  readonly app: App;
  readonly api: Awaited<ReturnType<typeof startApi>>;
  /** A plain client of the same redis-server: what another gateway would write. */
  readonly peer: Redis;
  /** Stops the API, the App, the peer client and redis-server (by its PID). */
  close(): Promise<void>;
}

/**
 * Starts redis-server on a free loopback port, an App (one worker, a listener on a free port, no
 * health checks, state in memory, the cluster syncing every 200 ms under `prefix`) with `config`
 * merged in at the top level, and its API on a free port; resolves once the cluster is up.
 */
export async function startRedisRig(prefix: string, log: pino.Logger, config: Record<string, unknown> = {}): Promise<RedisRig> {
  const port = await freePort();
  const redis = await startRedis('127.0.0.1', port);
  const peer = new Redis({ host: '127.0.0.1', port, lazyConnect: true });
  let app: App | undefined;
  let api: RedisRig['api'] | undefined;
  // Whatever started is stopped again when a later step fails (the caller's afterAll has no rig to close).
  const close = async (): Promise<void> => {
    await api?.close();
    await app?.stop(200);
    peer.disconnect();
    await redis.kill('SIGKILL');
  };
  try {
    await peer.connect();
    app = new App(
      validateConfig({
        workers: 1,
        listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
        upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: 9 }], health: { enabled: false } },
        state: { path: ':memory:' },
        api: { enabled: false },
        cluster: { redis: { url: `redis://127.0.0.1:${port}`, keyPrefix: prefix }, syncInterval: '200ms' },
        ...config,
      }),
      log,
    );
    await app.start();
    api = await startApi(
      { enabled: true, address: '127.0.0.1', port: 0, token: undefined },
      { app, version: 'test', log: pino({ level: 'silent' }), reload: async () => undefined, options: { processMetrics: false } },
    );
    const started = app;
    await waitFor(() => started.cluster!.up, { what: 'cluster up', timeout: 10_000, interval: 10 });
  } catch (e) {
    await close();
    throw e;
  }
  return { redis, app, api, peer, close };
}
