// A hostile writer on the cluster's real redis-server floods garbage for 10 s while real SMTP sessions go through `etd run`: none fails, etd lives, the counters show what was skipped, lifetimes are clamped.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { freePort, startRedis, type TestRedis } from '../../lab/redis.js';
import { CLI, type RunningEtd, runEtd } from '../helpers/cli.js';
import { skipWithout } from '../helpers/privileged.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';

const skip = skipWithout('redis-server', 'redis-server', 'hostile cluster peer (loopback)');
const FLOOD_MS = 10_000;
const FLOOD_MAX_ROUNDS = 5_000;
const DENY_TTL_MS = 600_000;

let redis: TestRedis;
let backend: TestBackend;
let etd: RunningEtd | undefined;
let tmp = '';
let smtpPort = 0;
let apiPort = 0;

const api = async (p: string): Promise<unknown> => (await fetch(`http://127.0.0.1:${apiPort}${p}`)).json();

describe.skipIf(skip)('a hostile writer on the shared Redis', () => {
  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-hostile-'));
    redis = await startRedis('127.0.0.1', await freePort());
    backend = await startBackend({ name: 'hostile.test' });
    smtpPort = await freePort();
    apiPort = await freePort();
    const dnsPort = await freePort(); // nothing listens there: every DNSBL query fails at once and counts 0
    const file = path.join(tmp, 'etd.yaml');
    fs.writeFileSync(
      file,
      YAML.stringify({
        listeners: [{ name: 'smtp', address: '127.0.0.1', port: smtpPort, mode: 'plain' }],
        detection: { window: '300ms', action: 'drop' },
        upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: backend.port }], health: { enabled: false } },
        cache: { enabled: true, ttl: '1h', denyTtl: '10m' },
        state: { path: path.join(tmp, 'state.db') },
        api: { enabled: true, address: '127.0.0.1', port: apiPort },
        limits: { perClient: 0 },
        reputation: {
          dnsbl: [{ zone: 'bl.test', weight: 3 }],
          resolvers: [`127.0.0.1:${dnsPort}`],
          timeout: '200ms',
          minTtl: '60s',
          maxTtl: '1h',
        },
        cluster: { redis: { url: redis.url, keyPrefix: 'etd:' }, syncInterval: '200ms' },
      }),
    );
    etd = runEtd(file);
    await etd.waitFor((l) => l.msg === 'etd started', 20_000);
    await etd.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('cluster: connected'), 10_000);
  }, 60_000);

  afterAll(async () => {
    if (etd && etd.child.exitCode === null && etd.child.pid !== undefined) {
      process.kill(etd.child.pid, 'SIGTERM');
      await etd.exited;
    }
    await redis?.kill('SIGKILL');
    await backend?.close();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('10 s of garbage: 0 failed sessions, etd alive, every kind counted, a valid entry still applies, lifetimes clamped', async () => {
    const w = new Redis({ host: '127.0.0.1', port: redis.port, lazyConnect: true });
    w.on('error', () => undefined);
    await w.connect();
    const clients = Array.from({ length: 10 }, (_, i) => `127.0.0.${10 + i}`);
    const garbageEvents = [
      '{"from":"x","kind":"access","cidr":"fe80::%x/64","list":"deny"}',
      '{"from":"x","kind":"access","cidr":"10.0.0.1/8","list":"deny"}',
      'not json at all',
      '{"from":',
      Buffer.from([0, 255, 128, 10, 13, 0xc3]).toString('latin1'),
      JSON.stringify({ from: 'x', kind: 'access', cidr: '1'.repeat(100_000), list: 'deny' }),
      '[1,2,3]',
      'null',
    ];
    // Once: what the findings used (a zone id in the hash, a deny until the year 33658), and one valid entry.
    await w.hset('etd:access:runtime', 'fe80::%x/64', 'deny', 'x'.repeat(100_000), 'deny', '10.1.0.0/16', 'maybe');
    await w.set('etd:cache:127.0.0.6', 'deny:999999999999999');
    // A valid peer change is written as etd writes it: the hash field, then the event.
    await w.hset('etd:access:runtime', '198.51.100.0/24', 'deny');
    await w.publish('etd:events', JSON.stringify({ from: 'peer', kind: 'access', cidr: '198.51.100.0/24', list: 'deny' }));

    const started = Date.now();
    let rounds = 0;
    const flood = (async () => {
      while (Date.now() - started < FLOOD_MS && rounds < FLOOD_MAX_ROUNDS) {
        const p = w.pipeline();
        for (const e of garbageEvents) p.publish('etd:events', e);
        p.hset('etd:access:runtime', `fe80::${rounds.toString(16)}%eth0/64`, 'deny');
        for (const c of clients) {
          p.set(`etd:cache:${c}`, rounds % 2 ? 'deny:-1' : `pass:${'9'.repeat(40)}`);
          p.set(
            `etd:dnsbl:bl.test/${c}`,
            rounds % 2 ? '{"answer":{"status":"answer","addresses":["x"]},"expires":8.64e15}' : '\u0000garbage',
          );
        }
        await p.exec();
        rounds++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();

    const t = (localAddress: string) =>
      nodemailer.createTransport({
        host: '127.0.0.1',
        port: smtpPort,
        secure: false,
        ignoreTLS: true,
        localAddress,
        connectionTimeout: 10_000,
        greetingTimeout: 10_000,
        socketTimeout: 10_000,
      } as never);
    let sent = 0;
    const failed: string[] = [];
    while (Date.now() - started < FLOOD_MS) {
      const from = clients[sent % clients.length]!;
      try {
        await t(from).sendMail({ from: 'a@example.test', to: 'b@example.test', subject: `m${sent}`, text: 'hello' });
      } catch (e) {
        failed.push(`${from}: ${(e as Error).message}`);
      }
      sent++;
    }
    await flood;

    expect(failed).toEqual([]);
    expect(sent).toBeGreaterThanOrEqual(clients.length);
    expect(backend.messages.length).toBe(sent);
    expect(rounds).toBeGreaterThan(10);
    expect(etd!.child.exitCode).toBeNull();

    // A client the hostile deny names is refused (that entry is well-formed), but only for denyTtl.
    await new Promise<void>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: smtpPort, localAddress: '127.0.0.6' });
      s.setTimeout(5000, () => s.destroy());
      s.on('error', () => resolve());
      s.on('close', () => resolve());
    });
    const entry = (await api('/v1/cache/127.0.0.6')) as { kind: string; expires: string };
    expect(entry.kind).toBe('deny');
    expect(Date.parse(entry.expires)).toBeLessThanOrEqual(Date.now() + DENY_TTL_MS);

    // The valid entry applied; nothing of the garbage did.
    const access = JSON.stringify(await api('/v1/access'));
    expect(access).toContain('198.51.100.0/24');
    expect(access).not.toContain('fe80');
    expect(access).not.toContain('10.1.0.0/16');

    const metrics = await (await fetch(`http://127.0.0.1:${apiPort}/metrics`)).text();
    for (const kind of ['event', 'access', 'cache', 'dnsbl']) {
      const m = new RegExp(`^etd_cluster_rejected_total\\{kind="${kind}"\\} (\\d+)$`, 'm').exec(metrics);
      expect(m, `etd_cluster_rejected_total{kind="${kind}"}`).not.toBeNull();
      expect(Number(m![1])).toBeGreaterThan(0);
    }
    const status = (await api('/v1/status')) as { cluster: { rejected: Record<string, number> } };
    expect(status.cluster.rejected.event).toBeGreaterThanOrEqual(rounds);
    // Warned once per kind and minute, not once per entry.
    const warns = etd!.lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('cluster peer sent a malformed entry'));
    expect(warns.length).toBeGreaterThan(0);
    expect(warns.length).toBeLessThanOrEqual(4);
    console.log(`hostile flood: ${rounds} rounds, ${sent} sessions delivered, rejected ${JSON.stringify(status.cluster.rejected)}`);
    w.disconnect();
  }, 60_000);

  it('last resort: an uncaught error is logged as one JSON line with its stack, then the process exits 1', async () => {
    const script = `
      const { createLogger } = await import(${JSON.stringify(path.join(path.dirname(CLI), 'log.js'))});
      const { installLastResort } = await import(${JSON.stringify(path.join(path.dirname(CLI), 'util/lastResort.js'))});
      installLastResort(createLogger('info'));
      setTimeout(() => { throw new RangeError('Cannot convert NaN to a BigInt'); }, 10);
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    expect(code).toBe(1);
    const line = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(line).toMatchObject({ level: 'fatal', kind: 'uncaughtException' });
    expect(String(line.stack)).toMatch(/RangeError: Cannot convert NaN to a BigInt\n\s+at /);
  }, 20_000);
});
