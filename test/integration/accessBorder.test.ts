// Issue 22 parts 1–3 against real software: hostile addresses from Redis (pub/sub and the shared hash) and the API never kill etd or answer 500; a large sync is one batch.

import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApi } from '../../src/api/server.js';
import { App } from '../../src/app.js';
import { validateConfig } from '../../src/config/load.js';
import { skipWithout } from '../helpers/privileged.js';
import { freePort, startRedis, type TestRedis } from '../helpers/redis.js';

const skip = skipWithout('redis-server', 'redis-server', 'access lists over Redis (loopback)');
const PREFIX = 'ab:';

let redis: TestRedis;
let app: App;
let api: Awaited<ReturnType<typeof startApi>>;
let peer: Redis;
const logs: Array<Record<string, unknown>> = [];

async function until<T>(what: string, f: () => T | undefined | false, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe.skipIf(skip)('access lists at the borders (real redis-server, real API)', () => {
  beforeAll(async () => {
    const port = await freePort();
    redis = await startRedis('127.0.0.1', port);
    peer = new Redis({ host: '127.0.0.1', port, lazyConnect: true });
    await peer.connect();
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    const config = validateConfig({
      workers: 1,
      listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
      upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: 9 }], health: { enabled: false } },
      access: { maxEntries: 30_000 },
      state: { path: ':memory:' },
      api: { enabled: false },
      cluster: { redis: { url: `redis://127.0.0.1:${port}`, keyPrefix: PREFIX }, syncInterval: '200ms' },
    });
    app = new App(config, pino({ level: 'debug' }, sink));
    await app.start();
    api = await startApi(
      { enabled: true, address: '127.0.0.1', port: 0, token: undefined },
      { app, version: 'test', log: pino({ level: 'silent' }), reload: async () => undefined, options: { processMetrics: false } },
    );
    await until('cluster up', () => app.cluster!.up);
  }, 30_000);

  afterAll(async () => {
    await api?.close();
    await app?.stop(200);
    peer?.disconnect();
    await redis?.kill('SIGKILL');
  });

  it('a zone ID published on the events channel or written to the shared hash is skipped; etd keeps working', async () => {
    await peer.publish(`${PREFIX}events`, JSON.stringify({ from: 'x', kind: 'access', cidr: 'fe80::%x/64', list: 'deny' }));
    await peer.hset(`${PREFIX}access:runtime`, 'fe80::%x/64', 'deny', '::%a/128', 'deny', '192.0.2.0/24', 'deny');
    // The good entry arrives with the same sync as the bad ones: the sync ran and survived them.
    await until('the good entry', () => app.access.match('192.0.2.9')?.list === 'deny');
    expect(app.access.list().map((e) => e.cidr.text)).not.toContain('fe80::%x/64');
    const warn = await until('a warning naming the zone ID', () => logs.find((l) => /zone ID/.test(String(l.msg))));
    expect(String(warn.msg)).toMatch(/write fe80::/);
    expect((await fetch(`${api.url}/v1/status`)).status).toBe(200);
    await peer.hdel(`${PREFIX}access:runtime`, 'fe80::%x/64', '::%a/128', '192.0.2.0/24');
    await until('the entry gone', () => app.access.match('192.0.2.9') === undefined);
  }, 20_000);

  it('API: a zone ID or a malformed address is a 400 with the reason, never a 500', async () => {
    const bad = ['fe80::%x/64', '::%a', 'fe80::1%eth0', '1.2.3', '0x7f.0.0.1', '::1/129', 'a'.repeat(64)];
    for (const b of bad) {
      const e = encodeURIComponent(b);
      const answers = [
        await fetch(`${api.url}/v1/access`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ cidr: b, list: 'deny' }),
        }),
        await fetch(`${api.url}/v1/access/${e}`, { method: 'DELETE' }),
        await fetch(`${api.url}/v1/clients/${e}`),
        await fetch(`${api.url}/v1/cache/${e}`),
        await fetch(`${api.url}/v1/reputation/${e}`),
      ];
      for (const r of answers) {
        const body = (await r.json()) as { message?: string; error?: string };
        expect(r.status, `${r.url}: ${JSON.stringify(body)}`).toBe(400);
        expect(JSON.stringify(body)).not.toMatch(/RangeError|BigInt|SyntaxError/);
      }
    }
    const r = await fetch(`${api.url}/v1/clients/${encodeURIComponent('fe80::1%eth0')}`);
    expect(JSON.stringify(await r.json())).toMatch(/zone ID/);
  }, 20_000);

  it('20,000 entries written to Redis arrive as one batch: one change for the workers, one summarizing log line', async () => {
    const n = 20_000;
    const fields: string[] = [];
    for (let i = 0; i < n; i++) fields.push(`10.${(i >> 8) & 0xff}.${i & 0xff}.0/24`, 'deny');
    let changes = 0;
    const before = app.access.onChange;
    app.access.onChange = () => {
      changes++;
      before?.();
    };
    const linesBefore = logs.length;
    await peer.hset(`${PREFIX}access:runtime`, ...fields);
    await until('all entries', () => app.access.runtimeSize === n, 20_000);
    expect(changes).toBe(1);
    expect(app.access.match('10.78.31.200')?.list).toBe('deny');
    const newLines = logs.slice(linesBefore).filter((l) => /access entr/.test(String(l.msg)));
    expect(newLines.length).toBe(1);
    expect(String(newLines[0]!.msg)).toMatch(/20000 added/);
    // Beyond access.maxEntries (30,000): skipped with one warning.
    const more: string[] = [];
    for (let i = 0; i < 15_000; i++) more.push(`2001:db8:${i.toString(16)}::/48`, 'deny');
    await peer.hset(`${PREFIX}access:runtime`, ...more);
    await until('the cap reached', () => app.access.runtimeSize === 30_000, 20_000);
    await until('the warning', () => logs.find((l) => /access\.maxEntries/.test(String(l.msg))));
    const post = await fetch(`${api.url}/v1/access`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ cidr: '203.0.113.0/24', list: 'deny' }),
    });
    expect(post.status).toBe(409);
    expect(JSON.stringify(await post.json())).toMatch(/access\.maxEntries/);
    app.access.onChange = before;
    await peer.del(`${PREFIX}access:runtime`);
    await until('all gone', () => app.access.runtimeSize === 0, 20_000);
  }, 60_000);
});
