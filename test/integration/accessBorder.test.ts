// Issue 22 parts 1–3 against real software: hostile addresses from Redis (pub/sub and the shared hash) and the API never kill etd or answer 500; a large sync is one batch.

import { Writable } from 'node:stream';
import type { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { App } from '../../src/app.js';
import { skipWithout } from '../helpers/privileged.js';
import { type RedisRig, startRedisRig } from '../helpers/redisRig.js';
import { waitFor } from '../helpers/wait.js';

const skip = skipWithout('redis-server', 'redis-server', 'access lists over Redis (loopback)');
const PREFIX = 'ab:';

let rig: RedisRig;
let app: App;
let api: RedisRig['api'];
let peer: Redis;
const logs: Array<Record<string, unknown>> = [];

describe.skipIf(skip)('access lists at the borders (real redis-server, real API)', () => {
  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    rig = await startRedisRig(PREFIX, pino({ level: 'debug' }, sink), { access: { maxEntries: 30_000 } });
    ({ app, api, peer } = rig);
  }, 30_000);

  afterAll(async () => {
    await rig?.close();
  });

  it('a zone ID published on the events channel or written to the shared hash is skipped; etd keeps working', async () => {
    await peer.publish(`${PREFIX}events`, JSON.stringify({ from: 'x', kind: 'access', cidr: 'fe80::%x/64', list: 'deny' }));
    await peer.hset(`${PREFIX}access:runtime`, 'fe80::%x/64', 'deny', '::%a/128', 'deny', '192.0.2.0/24', 'deny');
    // The good entry arrives with the same sync as the bad ones: the sync ran and survived them.
    await waitFor(() => app.access.match('192.0.2.9')?.list === 'deny', { what: 'the good entry', timeout: 10_000, interval: 10 });
    expect(app.access.list().map((e) => e.cidr.text)).not.toContain('fe80::%x/64');
    const warn = await waitFor(() => logs.find((l) => /zone ID/.test(String(l.msg))), {
      what: 'a warning naming the zone ID',
      timeout: 10_000,
      interval: 10,
    });
    expect(String(warn.msg)).toMatch(/write fe80::/);
    expect((await fetch(`${api.url}/v1/status`)).status).toBe(200);
    await peer.hdel(`${PREFIX}access:runtime`, 'fe80::%x/64', '::%a/128', '192.0.2.0/24');
    await waitFor(() => app.access.match('192.0.2.9') === undefined, { what: 'the entry gone', timeout: 10_000, interval: 10 });
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
    await waitFor(() => app.access.runtimeSize === n, { what: 'all entries', timeout: 20_000, interval: 10 });
    expect(changes).toBe(1);
    expect(app.access.match('10.78.31.200')?.list).toBe('deny');
    const newLines = logs.slice(linesBefore).filter((l) => /access entr/.test(String(l.msg)));
    expect(newLines.length).toBe(1);
    expect(String(newLines[0]!.msg)).toMatch(/20000 added/);
    // Beyond access.maxEntries (30,000): skipped with one warning.
    const more: string[] = [];
    for (let i = 0; i < 15_000; i++) more.push(`2001:db8:${i.toString(16)}::/48`, 'deny');
    await peer.hset(`${PREFIX}access:runtime`, ...more);
    await waitFor(() => app.access.runtimeSize === 30_000, { what: 'the cap reached', timeout: 20_000, interval: 10 });
    await waitFor(() => logs.find((l) => /access\.maxEntries/.test(String(l.msg))), { what: 'the warning', timeout: 10_000, interval: 10 });
    const post = await fetch(`${api.url}/v1/access`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ cidr: '203.0.113.0/24', list: 'deny' }),
    });
    expect(post.status).toBe(409);
    expect(JSON.stringify(await post.json())).toMatch(/access\.maxEntries/);
    app.access.onChange = before;
    await peer.del(`${PREFIX}access:runtime`);
    await waitFor(() => app.access.runtimeSize === 0, { what: 'all gone', timeout: 20_000, interval: 10 });
  }, 60_000);
});
