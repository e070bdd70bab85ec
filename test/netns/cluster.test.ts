// Two etd gateways (two namespaces) sharing one real redis-server: pass, deny and access entries cross over; Redis killed under load and restarted.
//
//   client ns 10.x.1.2, 10.x.1.100-139 ── gateway A (etd, 10.x.1.1:2525) ── backend ns: smtp-sink 10.x.2.10:25, redis-server 10.x.2.11:6379
//                                              └── 10.x.3.0/24 ── peer gateway B (etd, 10.x.3.2:2525)
// A and B see the same client addresses (A only routes the packets to B), use the same backend,
// and share state only through Redis. Their APIs are unix sockets the test reads directly. The
// backend is Postfix's smtp-sink: it greets at once (smtp-server waits 100 ms before its banner,
// which would hide what etd adds) and appends every message to a dump file the test reads.

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLab, type JsonEvent, type JsonLineProcess, type Lab } from '../../lab/netns.js';
import { startRedis, type TestRedis } from '../../lab/redis.js';
import { type RunningEtd, startEtdInNetns } from '../helpers/cli.js';
import { skipPrivileged, skipWithout } from '../helpers/privileged.js';
import { sleep, waitFor } from '../helpers/wait.js';

const SUITE = 'cluster: two gateways over Redis (netns)';
const skip = skipPrivileged(SUITE) || skipWithout('redis-server', 'redis-server', SUITE) || skipWithout('smtp-sink', 'postfix', SUITE);
const CLIENT = path.join(__dirname, 'clusterClient.mjs');
const WINDOW_MS = 2000;
const PORT = 2525;
const PREFIX = 'etdtest:';

let lab: Lab;
let dir = '';

let redis: TestRedis;
let a: RunningEtd;
let b: RunningEtd;
const running: RunningEtd[] = [];
/** Client source addresses, one per case so that no case sees another's state. */
const src = (i: number) => `10.${lab.x}.1.${100 + i}`;

function config(name: string, listen: string): string {
  const file = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(
    file,
    `
listeners:
  - { name: smtp, address: ${listen}, port: ${PORT}, mode: plain }
# Two gateways share this 2-core machine, each standing for a box of its own: one engine worker
# each (workers: auto would give both 2 workers on the same 2 cores, beside the load and Redis).
workers: 1
detection: { window: ${WINDOW_MS}ms, action: drop }
upstream:
  connectTimeout: 2s
  retries: 0
  health: { enabled: false }
  servers:
    - { name: b1, address: ${lab.v4.backends[0]}, port: 25 }
api: { address: ${path.join(dir, `${name}.sock`)} }
state: { path: ":memory:" }
cache: { enabled: true, ttl: 1h, denyTtl: 1h }
access: { denyAction: reject }
limits: { perClient: 0 }
cluster:
  redis: { url: "redis://${lab.v4.backends[1]}:6379", keyPrefix: "${PREFIX}", connectTimeout: 500ms, commandTimeout: 300ms }
log: { level: info }
`,
  );
  return file;
}

function api(name: string, method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: unknown; text: string }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        socketPath: path.join(dir, `${name}.sock`),
        method,
        path: urlPath,
        timeout: 5000,
        headers: data ? { 'content-type': 'application/json' } : {},
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text, body: text.startsWith('{') ? JSON.parse(text) : undefined }));
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath}: no answer in 5 s`)));
    req.end(data);
  });
}

async function client(
  mode: 'banner' | 'early',
  host: string,
  source: string,
  port = PORT,
): Promise<{ how: string; bannerMs?: number; data: string }> {
  // Warmed up on the backend directly (not through etd), so the figure is the network and etd, not a cold node.
  const warm = `${lab.v4.backends[0]}:25`;
  const r = await lab.exec(lab.ns.client, process.execPath, [CLIENT, mode, host, String(port), source, warm], { timeoutMs: 20_000 });
  return JSON.parse(r.stdout.trim()) as { how: string; bannerMs?: number; data: string };
}

async function redisCli(...args: string[]): Promise<string> {
  const r = await lab.exec(lab.ns.backend, 'redis-cli', ['-h', lab.v4.backends[1], '-p', '6379', '--raw', ...args], {
    timeoutMs: 5000,
    allowFailure: true,
  });
  return r.stdout.trim();
}

const sessionsOf = (etd: RunningEtd, source: string) => etd.lines.filter((l) => l.msg === 'session' && l.clientAddress === source);
const warningsOf = (etd: RunningEtd) =>
  etd.lines
    .filter((l) => l.level === 'warn' || l.level === 40)
    .map((l) => l.msg)
    .filter((m) => m.startsWith('cluster:'));

async function clusterStatus(name: string): Promise<{ connected: boolean; pendingWrites: number; lagMs: number | null }> {
  const r = await api(name, 'GET', '/v1/status');
  return (r.body as { cluster: { connected: boolean; pendingWrites: number; lagMs: number | null } }).cluster;
}

/** The max event-loop delay since the previous scrape (prom-client resets it on every scrape), in ms. */
async function loopMaxMs(name: string): Promise<number> {
  const r = await api(name, 'GET', '/metrics');
  const m = /^nodejs_eventloop_lag_max_seconds (\S+)$/m.exec(r.text);
  if (!m) throw new Error(`no nodejs_eventloop_lag_max_seconds in /metrics of ${name}`);
  return Number(m[1]) * 1000;
}

async function runtimeAccess(name: string): Promise<string[]> {
  const r = await api(name, 'GET', '/v1/access');
  return (r.body as { entries: Array<{ cidr: string; list: string; source: string }> }).entries
    .filter((e) => e.source === 'runtime')
    .map((e) => `${e.cidr} ${e.list}`)
    .sort();
}

const startRedisInLab = () => startRedis(lab.v4.backends[1], 6379, (cmd, args) => lab.spawn(lab.ns.backend, cmd, args));

describe.skipIf(skip)('two gateways sharing one real Redis', () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-cluster-'));
    lab = await createLab({ peerGateway: true });
    const peer = lab.peer!;
    // Extra client addresses (one per case, and the load's pool).
    await lab.exec(lab.ns.client, 'ip', ['-batch', '-'], {
      input: `${Array.from({ length: 40 }, (_, i) => `addr add ${src(i)}/24 dev ${lab.ifaces.client}`).join('\n')}\n`,
    });
    fs.chmodSync(dir, 0o777); // smtp-sink writes its dump as nobody
    lab.spawn(lab.ns.backend, 'smtp-sink', ['-u', 'nobody', '-D', path.join(dir, 'sink.dump'), `${lab.v4.backends[0]}:25`, '256']);
    await waitFor(
      async () => (await lab.exec(lab.ns.backend, 'ss', ['-Hltn', `src ${lab.v4.backends[0]}:25`])).stdout.includes(':25') || undefined,
      { what: 'smtp-sink listening', timeout: 5000, interval: 50 },
    );
    redis = await startRedisInLab();
    a = await startEtdInNetns(lab.ns.gateway, config('a', lab.v4.gatewayClientSide), running);
    b = await startEtdInNetns(peer.ns, config('b', peer.v4), running);
    await waitFor(async () => (await clusterStatus('a')).connected && (await clusterStatus('b')).connected, {
      what: 'both gateways connected to Redis',
      timeout: 10_000,
    });
  }, 90_000);

  afterAll(async () => {
    for (const e of running) if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill('SIGKILL');
    await redis?.kill('SIGKILL').catch(() => undefined);
    await lab?.destroy();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a client that passed through A gets its banner through B in under 5 ms', async () => {
    const times: number[] = [];
    // Nine clients, each a first visit on A (side by side: each waits the whole window); the median
    // of their banners on B is the figure (one sample can meet a busy machine).
    const firsts = await Promise.all(Array.from({ length: 9 }, (_, i) => client('banner', lab.v4.gatewayClientSide, src(i))));
    for (let i = 0; i < 9; i++) {
      const first = firsts[i]!;
      expect(first.data).toMatch(/^220 /);
      expect(first.bannerMs!).toBeGreaterThanOrEqual(WINDOW_MS - 50);
      // The pass is in Redis (written within a few ms of the relay).
      await waitFor(async () => (await redisCli('GET', `${PREFIX}cache:${src(i)}`)).startsWith('pass:') || undefined, {
        what: `the pass of ${src(i)} in Redis`,
      });
      const onB = await client('banner', lab.peer!.v4, src(i));
      expect(onB.data).toMatch(/^220 /);
      times.push(onB.bannerMs!);
      const s = await waitFor(() => sessionsOf(b, src(i))[0], { what: 'B summary' });
      expect(s).toMatchObject({ verdict: 'passed', released: 'cluster_pass' });
    }
    // For scale: the same client on B again (now a local pass-cache hit), and the backend's own banner.
    const local = (await client('banner', lab.peer!.v4, src(0))).bannerMs!;
    const direct = (await client('banner', lab.v4.backends[0], src(0), 25)).bannerMs!;
    console.log(`local pass-cache hit on B: ${local.toFixed(2)} ms; backend banner direct: ${direct.toFixed(2)} ms`);
    const sorted = [...times].sort((x, y) => x - y);
    console.log(`banner through B after a pass on A: ${times.map((t) => t.toFixed(2)).join(', ')} ms (median ${sorted[4]!.toFixed(2)})`);
    expect(sorted[4]!).toBeLessThan(5);
    expect(sorted[8]!).toBeLessThan(WINDOW_MS / 4);
  }, 60_000);

  it('an early talker caught on A is refused on B', async () => {
    const bot = src(10);
    const onA = await client('early', lab.v4.gatewayClientSide, bot);
    expect(onA.data).toBe('');
    await waitFor(async () => (await redisCli('GET', `${PREFIX}cache:${bot}`)).startsWith('deny:') || undefined, {
      what: 'the deny in Redis',
    });
    const onB = await client('banner', lab.peer!.v4, bot);
    expect(onB.data).toMatch(/^554 5\.7\.1/);
    expect(onB.bannerMs!).toBeLessThan(WINDOW_MS / 4);
    expect(await waitFor(() => sessionsOf(b, bot)[0], { what: 'B summary' })).toMatchObject({ verdict: 'denied', cause: 'cluster_deny' });
  }, 30_000);

  it("an access-list entry added through A's API refuses the client on B within 1 s", async () => {
    const blocked = src(11);
    const t0 = performance.now();
    const post = await api('a', 'POST', '/v1/access', { cidr: `${blocked}/32`, list: 'deny' });
    expect(post.status).toBe(201);
    await waitFor(async () => (await runtimeAccess('b')).includes(`${blocked}/32 deny`) || undefined, {
      what: 'the entry on B',
      timeout: 1000,
      interval: 10,
    });
    const ms = performance.now() - t0;
    console.log(`access entry added on A applied on B after ${ms.toFixed(1)} ms`);
    expect(ms).toBeLessThan(1000);
    const onB = await client('banner', lab.peer!.v4, blocked);
    expect(onB.data).toMatch(/^554 5\.7\.1/);
    expect(await waitFor(() => sessionsOf(b, blocked)[0], { what: 'B summary' })).toMatchObject({
      verdict: 'denied',
      cause: 'access_deny',
    });
  }, 30_000);

  it('Redis killed under load: 0 sessions lost, every passed client delivered, one warning, no event-loop stall over 100 ms beyond the delay with Redis up; restarted: written back, A and B agree', async () => {
    const pool = Array.from({ length: 16 }, (_, i) => src(20 + i));
    const loadA = lab.spawnJson(lab.ns.client, process.execPath, [
      CLIENT,
      'load',
      lab.v4.gatewayClientSide,
      String(PORT),
      '30',
      '4',
      ...pool.slice(0, 8),
    ]);
    const loadB = lab.spawnJson(lab.ns.client, process.execPath, [CLIENT, 'load', lab.peer!.v4, String(PORT), '30', '4', ...pool]);
    const results = (p: JsonLineProcess) => p.events.filter((e: JsonEvent) => e.event === 'result');
    await waitFor(() => results(loadA).length >= 10 && results(loadB).length >= 10, {
      what: 'load running on both',
      timeout: 20_000,
      interval: 100,
    });
    // Scrape once so the event-loop maximum covers only what follows; 2 s with Redis up, for comparison.
    await Promise.all([loopMaxMs('a'), loopMaxMs('b')]);
    await sleep(2000);
    const control = { a: await loopMaxMs('a'), b: await loopMaxMs('b') };
    const killedAt = Date.now();
    await redis.kill('SIGKILL');
    await waitFor(async () => !(await clusterStatus('a')).connected && !(await clusterStatus('b')).connected, {
      what: 'both see Redis down',
      timeout: 5000,
    });
    // Learnt while Redis is down: an access entry on A, and a new client passing on A.
    const whileDown = src(12);
    expect((await api('a', 'POST', '/v1/access', { cidr: '192.0.2.0/24', list: 'deny' })).status).toBe(201);
    const passed = await client('banner', lab.v4.gatewayClientSide, whileDown);
    expect(passed.data).toMatch(/^220 /);
    await sleep(2000);
    const stall = { a: await loopMaxMs('a'), b: await loopMaxMs('b') };
    const sessionsDuringOutage = results(loadA).length + results(loadB).length;

    redis = await startRedisInLab();
    await waitFor(async () => (await clusterStatus('a')).connected && (await clusterStatus('b')).connected, {
      what: 'both back',
      timeout: 10_000,
      interval: 50,
    });
    loadA.child.kill('SIGTERM');
    loadB.child.kill('SIGTERM');
    await Promise.all([loadA.waitFor((e) => e.event === 'done', 20_000), loadB.waitFor((e) => e.event === 'done', 20_000)]);

    const all = [...results(loadA), ...results(loadB)];
    const failed = all.filter((e) => e.delivered !== true);
    const received = () =>
      new Set([...fs.readFileSync(path.join(dir, 'sink.dump'), 'latin1').matchAll(/^X-Mail-Args: <([^>]*)>/gm)].map((m) => m[1]));
    await waitFor(
      () => {
        const got = received();
        return all.every((e) => got.has(String(e.from))) || undefined;
      },
      { what: 'every delivered message at the backend', timeout: 5000, interval: 50 },
    );
    const afterKill = all.filter((e) => Number(e.at) > killedAt).length;
    console.log(
      `Redis SIGKILL under load: ${all.length} sessions (${afterKill} after the kill, ${sessionsDuringOutage} before the restart), ${failed.length} failed; ` +
        `event-loop max delay while down: A ${stall.a.toFixed(1)} ms, B ${stall.b.toFixed(1)} ms (the 2 s before the kill: A ${control.a.toFixed(1)} ms, B ${control.b.toFixed(1)} ms)`,
    );
    expect(failed).toEqual([]);
    expect(afterKill).toBeGreaterThan(0);
    // The outage adds no stall: the loop's worst delay while Redis is down stays within 100 ms of
    // its worst delay in the 2 s before with Redis up. The outage window is longer than the control
    // (the wait for both to notice, the API call, the client), and on the loaded 2-core CI machine
    // scheduling alone gives 20-75 ms there (CI measured 74 ms against a control of 14). A blocking
    // reconnect (Redis's connect timeout is seconds) or a synchronous drain of the write queue would
    // show as hundreds of ms.
    expect(stall.a).toBeLessThanOrEqual(Math.max(100, control.a + 100));
    expect(stall.b).toBeLessThanOrEqual(Math.max(100, control.b + 100));
    for (const g of [a, b]) {
      const w = warningsOf(g);
      expect(w.filter((m) => m.includes('Redis is down'))).toHaveLength(1);
      expect(w.filter((m) => m.includes('Redis is up again'))).toHaveLength(1);
    }

    // Written back: the fresh Redis holds what A learnt while it was down, and B sees it.
    await waitFor(async () => (await redisCli('GET', `${PREFIX}cache:${whileDown}`)).startsWith('pass:') || undefined, {
      what: 'the pass learnt while down in Redis',
      timeout: 5000,
      interval: 50,
    });
    await waitFor(
      async () => {
        const [ea, eb] = await Promise.all([runtimeAccess('a'), runtimeAccess('b')]);
        return ea.includes('192.0.2.0/24 deny') && JSON.stringify(ea) === JSON.stringify(eb) ? true : undefined;
      },
      { what: 'A and B agree on the runtime access entries', timeout: 5000, interval: 50 },
    );
    const onB = await client('banner', lab.peer!.v4, whileDown);
    expect(onB.data).toMatch(/^220 /);
    expect(onB.bannerMs!).toBeLessThan(WINDOW_MS / 4);
    expect(await waitFor(() => sessionsOf(b, whileDown)[0], { what: 'B summary' })).toMatchObject({
      verdict: 'passed',
      released: 'cluster_pass',
    });
    // Each load client's addresses are known to Redis again (written back by whoever learnt them).
    for (const s of pool) expect(await redisCli('GET', `${PREFIX}cache:${s}`)).toMatch(/^pass:\d+$/);
  }, 120_000);
});
