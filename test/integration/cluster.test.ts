// Two in-process etd Apps on loopback sharing one real redis-server: a pass, a deny and an access entry learnt on A act on B; Redis down and back.

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Value } from '@sinclair/typebox/value';
import { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startRedis, type TestRedis } from '../../lab/redis.js';
import { StatusBody } from '../../src/api/routes/status.js';
import { startApi } from '../../src/api/server.js';
import { App } from '../../src/app.js';
import { doctorCommand } from '../../src/commands/doctor.js';
import { statusCommand } from '../../src/commands/status.js';
import { validateConfig } from '../../src/config/load.js';
import type { SessionSummary } from '../../src/proxy/protocol.js';
import { rawClient, testWorkers } from '../helpers/etd.js';
import { skipWithout } from '../helpers/privileged.js';
import { sleep, waitFor } from '../helpers/wait.js';

const skip = skipWithout('redis-server', 'redis-server', 'cluster over Redis (loopback)');
const WINDOW_MS = 1500;

interface Gateway {
  app: App;
  port: number;
  summaries: SessionSummary[];
  logs: Array<Record<string, unknown>>;
}

let backend: net.Server;
let backendPort = 0;
let redis: TestRedis;
let redisPort = 0;
const gateways: Gateway[] = [];

async function gateway(prefix: string, redis: Record<string, unknown> = { url: `redis://127.0.0.1:${redisPort}` }): Promise<Gateway> {
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const config = validateConfig({
    workers: testWorkers(),
    listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
    detection: { window: `${WINDOW_MS}ms`, action: 'drop' },
    upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: backendPort }], health: { enabled: false } },
    cache: { enabled: true, ttl: '1h', denyTtl: '1h' },
    access: { denyAction: 'reject' },
    state: { path: ':memory:' },
    api: { enabled: false },
    limits: { perClient: 0 },
    cluster: { redis: { ...redis, keyPrefix: prefix, commandTimeout: '300ms', connectTimeout: '500ms' }, syncInterval: '500ms' },
  });
  const app = new App(config, pino({ level: 'debug' }, sink));
  const summaries: SessionSummary[] = [];
  app.observe({ sessionEnded: (s) => summaries.push(s) });
  await app.start();
  const g = { app, port: app.listenerList()[0]!.addresses()[0]!.port, summaries, logs };
  gateways.push(g);
  return g;
}

const polite = (port: number) => rawClient(port, (s) => s.once('data', () => s.write('QUIT\r\n')), WINDOW_MS + 3000);
const early = (port: number) => rawClient(port, (s) => s.write('EHLO bot.example\r\n'), WINDOW_MS + 3000);

describe.skipIf(skip)('cluster over a real Redis (loopback)', () => {
  beforeAll(async () => {
    backend = net.createServer((c) => {
      c.on('error', () => undefined);
      c.write('220 cluster.test ESMTP\r\n');
      c.on('data', (d) => {
        if (d.toString('latin1').toUpperCase().startsWith('QUIT')) c.end('221 2.0.0 bye\r\n');
      });
    });
    await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
    backendPort = (backend.address() as net.AddressInfo).port;
    redisPort = await freePort();
    redis = await startRedis('127.0.0.1', redisPort);
  }, 20_000);

  afterEach(async () => {
    for (const g of gateways.splice(0)) await g.app.stop(200);
  });

  afterAll(async () => {
    await redis?.kill('SIGKILL');
    await new Promise((r) => backend?.close(r));
  });

  it('a pass on A releases the client on B at once; an early talker on A is refused on B', async () => {
    const a = await gateway('t1:');
    const b = await gateway('t1:');
    await waitFor(() => a.app.cluster!.up && b.app.cluster!.up, { what: 'both connected' });

    const first = await polite(a.port);
    expect(first.firstByteAfterMs!).toBeGreaterThanOrEqual(WINDOW_MS - 50);
    await waitFor(() => a.app.cluster!.status().pendingWrites === 0 && a.summaries.length === 1, { what: 'the pass written to Redis' });
    await sleep(50);
    const onB = await polite(b.port);
    expect(onB.data.toString()).toMatch(/^220 cluster.test/);
    expect(onB.firstByteAfterMs!).toBeLessThan(WINDOW_MS / 4); // released: not held for the window
    const sb = await waitFor(() => b.summaries[0], { what: 'B summary' });
    expect(sb).toMatchObject({ verdict: 'passed', released: 'cluster_pass' });
    // Adopted locally: the next connection on B is a local pass-cache hit.
    await polite(b.port);
    expect(await waitFor(() => b.summaries[1], { what: 'second B summary' })).toMatchObject({ verdict: 'passed', skipped: 'pass_cache' });

    // Now the same address talks early on A: the deny replaces the pass everywhere.
    a.app.cache.delete('127.0.0.1');
    b.app.cache.delete('127.0.0.1');
    const bot = await early(a.port);
    expect(bot.data.length).toBe(0);
    await waitFor(() => a.summaries.some((s) => s.verdict === 'early_talker') && a.app.cluster!.status().pendingWrites === 0, {
      what: 'the deny written',
    });
    await sleep(50);
    b.app.cache.delete('127.0.0.1');
    const refused = await polite(b.port);
    expect(refused.data.toString()).toMatch(/^554 5\.7\.1/);
    expect(refused.firstByteAfterMs!).toBeLessThan(WINDOW_MS / 4);
    expect(await waitFor(() => b.summaries.find((x) => x.verdict === 'denied'), { what: 'B deny summary' })).toMatchObject({
      verdict: 'denied',
      cause: 'cluster_deny',
    });
  }, 30_000);

  it('an access entry added on A applies on B, and its deletion too (the time is printed, not asserted)', async () => {
    const a = await gateway('t2:');
    const b = await gateway('t2:');
    await waitFor(() => a.app.cluster!.up && b.app.cluster!.up, { what: 'both connected' });
    const t0 = performance.now();
    a.app.access.add('192.0.2.0/24', 'deny');
    a.app.cluster!.accessChanged('192.0.2.0/24', 'deny');
    await waitFor(() => b.app.access.match('192.0.2.7')?.list === 'deny', { what: 'B has the entry', timeout: 10_000 });
    const ms = performance.now() - t0;
    console.log(`access entry from A applied on B after ${ms.toFixed(1)} ms`);
    expect(ms).toBeLessThan(1000);
    a.app.access.remove('192.0.2.0/24', 'runtime');
    a.app.cluster!.accessChanged('192.0.2.0/24', undefined);
    await waitFor(() => b.app.access.match('192.0.2.7') === undefined || undefined, { what: 'B dropped it', timeout: 10_000 });
  }, 20_000);

  it('another kind of value (dnsbl) shared with put on A is read with get on B, in its own namespace', async () => {
    const a = await gateway('t7:');
    const b = await gateway('t7:');
    await waitFor(() => a.app.cluster!.up && b.app.cluster!.up, { what: 'both connected' });
    const value = JSON.stringify({ answer: { status: 'answer', addresses: ['127.0.0.2'] }, expires: Date.now() + 60_000 });
    a.app.cluster!.put('dnsbl', 'zen.spamhaus.org/192.0.2.5', value, Date.now() + 60_000);
    // A value that is not a DNSBL answer is skipped on read and counted.
    a.app.cluster!.put('dnsbl', 'zen.spamhaus.org/192.0.2.6', 'zen.spamhaus.org=127.0.0.2', Date.now() + 60_000);
    await waitFor(() => a.app.cluster!.status().pendingWrites === 0 || undefined, { what: 'written' });
    await sleep(50);
    const got = await new Promise<string | undefined>((resolve) => {
      b.app.cluster!.get('dnsbl', 'zen.spamhaus.org/192.0.2.5', resolve);
      setTimeout(() => resolve(undefined), 1000);
    });
    expect(got).toBe(value);
    const bad = await new Promise<string | undefined>((resolve) => {
      b.app.cluster!.get('dnsbl', 'zen.spamhaus.org/192.0.2.6', resolve);
      setTimeout(() => resolve(undefined), 300);
    });
    expect(bad).toBeUndefined();
    expect(b.app.cluster!.status().rejected.dnsbl).toBe(1);
    // Not a cache entry: the cache lookup for the same address finds nothing.
    const cacheHit = await new Promise<string | undefined>((resolve) => {
      b.app.cluster!.lookup('192.0.2.5', (kind) => resolve(kind));
      setTimeout(() => resolve(undefined), 300);
    });
    expect(cacheHit).toBeUndefined();
  }, 20_000);

  it('status, etd status, /metrics and POST /v1/access show and use the cluster', async () => {
    const a = await gateway('t4:');
    const b = await gateway('t4:');
    await waitFor(() => a.app.cluster!.up && b.app.cluster!.up, { what: 'both connected' });
    const api = await startApi(
      { enabled: true, address: '127.0.0.1', port: 0, token: undefined },
      { app: a.app, version: 'test', log: pino({ level: 'silent' }), reload: async () => undefined, options: { processMetrics: false } },
    );
    try {
      const status = (await (await fetch(`${api.url}/v1/status`)).json()) as StatusBody;
      expect(Value.Check(StatusBody, status)).toBe(true);
      expect(status.cluster).toMatchObject({ connected: true, state: 'up', where: `redis://127.0.0.1:${redisPort}`, lastError: null });
      const metrics = await (await fetch(`${api.url}/metrics`)).text();
      expect(metrics).toMatch(/^etd_cluster_up 1$/m);
      expect(metrics).toMatch(/^etd_cluster_errors_total\{op="connect"\} 0$/m);
      const out: string[] = [];
      expect(await statusCommand({ url: api.url, json: false }, (l) => out.push(l))).toBe(0);
      expect(out.join('\n')).toMatch(new RegExp(`^cluster +up: redis://127\\.0\\.0\\.1:${redisPort}`, 'm'));
      // The API route announces the change: B applies it.
      const post = await fetch(`${api.url}/v1/access`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ cidr: '198.51.100.0/24', list: 'deny' }),
      });
      expect(post.status).toBe(201);
      await waitFor(() => b.app.access.match('198.51.100.9')?.list === 'deny' || undefined, { what: 'B has it', timeout: 10_000 });
      expect(b.app.access.list().find((e) => e.source === 'runtime')).toMatchObject({ list: 'deny', source: 'runtime' });
      const del = await fetch(`${api.url}/v1/access/198.51.100.0%2F24`, { method: 'DELETE' });
      expect(del.status).toBe(204);
      await waitFor(() => b.app.access.match('198.51.100.9') === undefined || undefined, { what: 'B dropped it', timeout: 10_000 });
    } finally {
      await api.close();
    }
  }, 20_000);

  it('etd doctor: Redis reachable and the prefix writable is OK; a Redis that does not answer is a FAIL with the fix', async () => {
    const base = {
      listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
      upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: backendPort }], health: { enabled: false } },
      state: { path: ':memory:' },
      api: { enabled: false },
    };
    const findings = async (url: string) => {
      const out: string[] = [];
      await doctorCommand(
        validateConfig({ ...base, cluster: { redis: { url, keyPrefix: 'doc:', connectTimeout: '500ms' } } }),
        { json: true },
        (l) => out.push(l),
      );
      return (
        JSON.parse(out.join('\n')) as { findings: Array<{ id: string; status: string; detail: string; fix?: string }> }
      ).findings.find((f) => f.id === 'cluster.redis');
    };
    expect(await findings(`redis://127.0.0.1:${redisPort}`)).toMatchObject({ status: 'OK' });
    const down = await findings(`redis://127.0.0.1:${await freePort()}`);
    expect(down).toMatchObject({ status: 'FAIL' });
    expect(down!.detail).toMatch(/ECONNREFUSED/);
    expect(down!.fix).toMatch(/redis-cli/);
  }, 20_000);

  it('through Sentinel: a gateway that finds the master by its name shares with one that has its URL', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-sentinel-'));
    const port = await freePort();
    // Sentinel rewrites its config file: it gets its own, in a directory the test deletes.
    fs.writeFileSync(
      path.join(dir, 'sentinel.conf'),
      `port ${port}\nbind 127.0.0.1\ndir ${dir}\nsentinel monitor mymaster 127.0.0.1 ${redisPort} 1\n`,
    );
    const sentinel = spawn('redis-server', [path.join(dir, 'sentinel.conf'), '--sentinel'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let out = '';
      sentinel.stdout!.on('data', (c: Buffer) => (out += c.toString()));
      await waitFor(() => out.includes('+monitor master mymaster') || undefined, { what: 'sentinel monitoring', timeout: 10_000 });
      const a = await gateway('t5:', { sentinels: [`127.0.0.1:${port}`], name: 'mymaster' });
      const b = await gateway('t5:');
      await waitFor(() => a.app.cluster!.up && b.app.cluster!.up, { what: 'both connected', timeout: 10_000 });
      expect(a.app.cluster!.status().where).toBe(`sentinel mymaster via 127.0.0.1:${port}`);
      await polite(a.port);
      await waitFor(() => a.summaries.length === 1 && a.app.cluster!.status().pendingWrites === 0, {
        what: 'the pass written through the sentinel-found master',
      });
      await sleep(50);
      const onB = await polite(b.port);
      expect(onB.firstByteAfterMs!).toBeLessThan(WINDOW_MS / 4);
      expect(await waitFor(() => b.summaries[0], { what: 'B summary' })).toMatchObject({ verdict: 'passed', released: 'cluster_pass' });
    } finally {
      if (sentinel.pid !== undefined && sentinel.exitCode === null) process.kill(sentinel.pid, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('over TLS (rediss://): the certificate is verified against cluster.redis.caFile', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-tls-'));
    const port = await freePort();
    let server: ReturnType<typeof spawn> | undefined;
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-keyout',
          path.join(dir, 'key.pem'),
          '-out',
          path.join(dir, 'cert.pem'),
          '-days',
          '1',
          '-subj',
          '/CN=127.0.0.1',
          '-addext',
          'subjectAltName=IP:127.0.0.1',
        ],
        { stdio: 'ignore' },
      );
      server = spawn(
        'redis-server',
        [
          '--port',
          '0',
          '--tls-port',
          String(port),
          '--tls-cert-file',
          path.join(dir, 'cert.pem'),
          '--tls-key-file',
          path.join(dir, 'key.pem'),
          '--tls-auth-clients',
          'no',
          '--bind',
          '127.0.0.1',
          '--save',
          '',
          '--appendonly',
          'no',
          '--requirepass',
          'tls-test-secret',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      server.stdout!.on('data', (c: Buffer) => (out += c.toString()));
      await waitFor(() => out.includes('Ready to accept connections') || undefined, { what: 'TLS redis ready', timeout: 10_000 });
      const url = `rediss://:tls-test-secret@127.0.0.1:${port}`;
      const trusted = await gateway('t6:', { url, caFile: path.join(dir, 'cert.pem') });
      const untrusted = await gateway('t6:', { url });
      await waitFor(() => trusted.app.cluster!.up || undefined, { what: 'connected over TLS with the CA', timeout: 10_000 });
      await waitFor(() => untrusted.app.cluster!.status().lastError?.match(/certificate/i) ?? undefined, {
        what: 'the other refused the unknown certificate',
        timeout: 10_000,
      });
      expect(untrusted.app.cluster!.up).toBe(false);
      expect(trusted.app.cluster!.status().where).toBe(`rediss://127.0.0.1:${port}`);
    } finally {
      if (server?.pid !== undefined && server.exitCode === null) process.kill(server.pid, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('Redis slow (DEBUG SLEEP): the lookup times out, the session is connected when its window ends, no down/up warnings', async () => {
    const a = await gateway('t8:');
    await waitFor(() => a.app.cluster!.up, { what: 'connected' });
    const blocker = new Redis({ port: redisPort, host: '127.0.0.1', lazyConnect: true });
    await blocker.connect();
    try {
      const sleeping = blocker.call('DEBUG', 'SLEEP', '2.5').catch(() => undefined);
      await sleep(100);
      const slow = await polite(a.port);
      expect(slow.data.toString()).toMatch(/^220 cluster.test/);
      expect(slow.firstByteAfterMs!).toBeGreaterThanOrEqual(WINDOW_MS - 50);
      expect(slow.firstByteAfterMs!).toBeLessThan(WINDOW_MS + 300);
      expect(a.app.cluster!.status().lookups.error).toBe(1);
      expect(a.app.cluster!.status().errors.lookup).toBe(1);
      expect(a.app.cluster!.status().lastError).toMatch(/Command timed out/);
      await sleeping;
    } finally {
      blocker.disconnect();
    }
    expect(a.logs.filter((l) => l.level === 40 && String(l.msg).startsWith('cluster:'))).toEqual([]);
  }, 20_000);

  it('Redis down: sessions run their window from local state, one warning each way, and what was learnt is written back', async () => {
    const prefix = 't3:';
    const a = await gateway(prefix);
    await waitFor(() => a.app.cluster!.up, { what: 'connected' });
    await redis.kill('SIGKILL');
    await waitFor(() => !a.app.cluster!.up || undefined, { what: 'down' });
    const down = await polite(a.port);
    expect(down.data.toString()).toMatch(/^220 cluster.test/);
    expect(down.firstByteAfterMs!).toBeGreaterThanOrEqual(WINDOW_MS - 50);
    expect(down.firstByteAfterMs!).toBeLessThan(WINDOW_MS + 500);
    redis = await startRedis('127.0.0.1', redisPort);
    await waitFor(() => a.app.cluster!.up || undefined, { what: 'up again', timeout: 10_000 });
    await waitFor(() => a.app.cluster!.status().pendingWrites === 0 || undefined, { what: 'written back' });
    const check = new Redis({ port: redisPort, host: '127.0.0.1', keyPrefix: prefix, lazyConnect: true });
    await check.connect();
    try {
      expect(await check.get('cache:127.0.0.1')).toMatch(/^pass:\d+$/);
      expect(await check.pttl('cache:127.0.0.1')).toBeGreaterThan(3_000_000);
    } finally {
      check.disconnect();
    }
    const warns = a.logs.filter((l) => l.level === 40 && String(l.msg).startsWith('cluster:')).map((l) => l.msg);
    expect(warns).toEqual([expect.stringMatching(/Redis is down/), expect.stringMatching(/Redis is up again/)]);
  }, 30_000);
});
