// Pass cache, deny cache and access lists end to end over loopback (127.0.0.x sources), persisted in SQLite across restarts, and their API (/v1/cache, /v1/access) over real HTTP.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AccessListBody, AccessPostBody } from '../../src/api/routes/access.js';
import { CacheEntryBody, CacheListBody } from '../../src/api/routes/cache.js';
import { type ApiHandle, startApi } from '../../src/api/server.js';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { sleep, waitFor } from '../helpers/wait.js';

const WINDOW_MS = 600;
const silent = pino({ level: 'silent' });

/**
 * A backend that greets the moment it accepts (the smtp-server package takes ~100 ms for its own
 * greeting), so a banner's latency through etd is etd's delay and nothing else.
 */
let backend: { server: net.Server; port: number; banner: string; connections: number };
let tmp: string;
let fileNo = 0;
/** Everything a test started; afterEach stops it, also when the test failed. */
const running: Array<{ etd: TestEtd; api?: ApiHandle }> = [];

beforeAll(async () => {
  const banner = '220 cache.test ESMTP ready';
  const server = net.createServer((c) => {
    backend.connections++;
    c.on('error', () => undefined);
    c.write(`${banner}\r\n`);
    c.on('data', (d) => {
      if (d.toString('latin1').toUpperCase().startsWith('QUIT')) c.end('221 2.0.0 bye\r\n');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  backend = { server, port: (server.address() as net.AddressInfo).port, banner, connections: 0 };
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-cache-'));
});
afterAll(async () => {
  await new Promise((r) => backend.server.close(r));
  fs.rmSync(tmp, { recursive: true, force: true });
});
afterEach(async () => {
  for (const r of running.splice(0)) {
    await r.api?.close();
    await r.etd.stop(500);
  }
});

type Doc = Record<string, unknown>;

function doc(over: Doc = {}): Doc {
  return {
    detection: { window: `${WINDOW_MS}ms`, action: 'drop' },
    upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: backend.port }] },
    cache: { enabled: true, ttl: '1d', denyTtl: '1h', scope: 'ip' },
    ...over,
  };
}

function stateFile(): string {
  return path.join(tmp, `state-${++fileNo}.db`);
}

async function start(d: Doc): Promise<TestEtd> {
  const etd = await startEtdForTest(d);
  running.push({ etd });
  return etd;
}

/** Stops an instance early (a restart); afterEach skips it then. */
async function stop(etd: TestEtd): Promise<void> {
  const i = running.findIndex((r) => r.etd === etd);
  const [r] = running.splice(i, 1);
  await r?.api?.close();
  await etd.stop(500);
}

async function startWithApi(d: Doc): Promise<{ etd: TestEtd; url: string }> {
  const etd = await start(d);
  const api = await startApi(
    { enabled: true, address: '127.0.0.1', port: 0, token: undefined },
    { app: etd.app, version: 'test', log: silent, reload: async () => undefined, options: { processMetrics: false } },
  );
  running.find((r) => r.etd === etd)!.api = api;
  return { etd, url: api.url };
}

interface Probe {
  /** ms from the TCP connect to the last line of the greeting ("220 ..."), when one came. */
  bannerMs?: number;
  /** ms from the TCP connect to the first byte received, when one came. */
  firstByteMs?: number;
  data: string;
  closedBy: 'end' | 'reset' | 'timeout';
}

/**
 * One SMTP connection from `from` (a 127.0.0.x source address): waits for the greeting and says
 * QUIT, or with `talk` speaks at once (an early talker), and reports what came back and when.
 */
function probe(port: number, opts: { from?: string; talk?: string; timeoutMs?: number } = {}): Promise<Probe> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress: opts.from ?? '127.0.0.1' });
    let t0 = 0;
    let data = '';
    const r: Omit<Probe, 'data' | 'closedBy'> = {};
    let done = false;
    const finish = (closedBy: Probe['closedBy']) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ ...r, data, closedBy });
    };
    const timer = setTimeout(() => finish('timeout'), opts.timeoutMs ?? 10_000);
    s.on('connect', () => {
      t0 = performance.now();
      if (opts.talk !== undefined) s.write(opts.talk);
    });
    s.on('data', (c: Buffer) => {
      r.firstByteMs ??= performance.now() - t0;
      data += c.toString('latin1');
      if (r.bannerMs === undefined && /(^|\n)220 [^\n]*\n/.test(data)) {
        r.bannerMs = performance.now() - t0;
        s.write('QUIT\r\n');
      }
    });
    s.on('end', () => finish('end'));
    s.on('close', () => finish('end'));
    s.on('error', (e: NodeJS.ErrnoException) => finish(e.code === 'ECONNRESET' ? 'reset' : 'end'));
  });
}

/** A full window: at least the window (timer granularity aside). */
function expectWindow(p: Probe, what: string): void {
  expect(p.bannerMs, `${what}: ${JSON.stringify(p)}`).toBeDefined();
  expect(p.bannerMs!).toBeGreaterThanOrEqual(WINDOW_MS - 5);
}

/** No window: the greeting comes as fast as the backend gives it (well under half the window, even on a loaded machine). */
function expectNoWindow(p: Probe, what: string): void {
  expect(p.bannerMs, `${what}: ${JSON.stringify(p)}`).toBeDefined();
  expect(p.bannerMs!).toBeLessThan(WINDOW_MS / 2);
}

function expectRefusedAtOnce(p: Probe, what: string): void {
  expect(p.data, what).toMatch(/^554 5\.7\.1 /);
  expect(p.closedBy, what).toBe('end');
  expect(p.firstByteMs!, what).toBeLessThan(WINDOW_MS / 4);
}

const ms = (x: number | undefined) => (x === undefined ? 'none' : `${x.toFixed(1)} ms`);

describe('pass cache', () => {
  it('a client that waited gets the banner with no window on its next connection', async () => {
    const etd = await start(doc());
    const first = await probe(etd.port);
    await waitFor(() => etd.app.cache.get('127.0.0.1')?.kind === 'pass', { what: 'the pass entry' });
    const second = await probe(etd.port);
    const direct = await probe(backend.port);
    console.log(
      `pass cache: first banner after ${ms(first.bannerMs)}, second after ${ms(second.bannerMs)} ` +
        `(window ${WINDOW_MS} ms; the backend's own banner, connecting directly: ${ms(direct.bannerMs)})`,
    );
    expectWindow(first, 'first connection');
    expectNoWindow(second, 'second connection');
    expect(second.data).toContain(backend.banner);
    const sums = await etd.waitForSummaries(2);
    expect(sums[0]).toMatchObject({ verdict: 'passed' });
    expect(sums[0]!.skipped).toBeUndefined();
    expect(sums[1]).toMatchObject({ verdict: 'passed', skipped: 'pass_cache' });
  });

  it('survives a restart: a new App on the same state.path skips the window for the client, and refuses the early talker', async () => {
    const file = stateFile();
    const d = doc({ state: { path: file } });
    const one = await start(d);
    const first = await probe(one.port);
    const talker = await probe(one.port, { from: '127.0.0.3', talk: 'EHLO bot\r\n' });
    expect(talker.closedBy).toBe('reset');
    await waitFor(() => one.app.cache.size === 2, { what: 'both entries' });
    // stop() flushes the batched writes (they would otherwise wait up to 200 ms).
    await stop(one);

    const two = await start(d);
    expect(two.app.cache.size).toBe(2);
    const again = await probe(two.port);
    const refused = await probe(two.port, { from: '127.0.0.3' });
    console.log(
      `pass cache across a restart: first banner after ${ms(first.bannerMs)}, after the restart ${ms(again.bannerMs)}; ` +
        `deny cache after the restart: 554 after ${ms(refused.firstByteMs)}`,
    );
    expectWindow(first, 'before the restart');
    expectNoWindow(again, 'after the restart');
    expectRefusedAtOnce(refused, 'early talker after the restart');
    const sums = await two.waitForSummaries(2);
    expect(sums.find((s) => s.clientAddress === '127.0.0.1')).toMatchObject({ skipped: 'pass_cache' });
    expect(sums.find((s) => s.clientAddress === '127.0.0.3')).toMatchObject({ verdict: 'denied', cause: 'deny_cache' });
  });

  it('an entry that lapsed (ttl) brings the window back', async () => {
    const etd = await start(doc({ cache: { enabled: true, ttl: '1s', denyTtl: '1h', scope: 'ip' } }));
    const first = await probe(etd.port);
    await waitFor(() => etd.app.cache.get('127.0.0.1') !== undefined, { what: 'the pass entry' });
    const second = await probe(etd.port);
    await sleep(1200);
    expect(etd.app.cache.get('127.0.0.1')).toBeUndefined();
    const third = await probe(etd.port);
    console.log(`pass cache ttl 1s: ${ms(first.bannerMs)}, then ${ms(second.bannerMs)}, after 1.2 s ${ms(third.bannerMs)}`);
    expectWindow(first, 'first');
    expectNoWindow(second, 'within the ttl');
    expectWindow(third, 'after the ttl');
    const sums = await etd.waitForSummaries(3);
    expect(sums.map((s) => s.skipped ?? null)).toEqual([null, 'pass_cache', null]);
  });

  it('expired entries are swept from memory and from the store', async () => {
    const file = stateFile();
    const etd = await start(doc({ state: { path: file }, cache: { enabled: true, ttl: '300ms', denyTtl: '300ms', scope: 'ip' } }));
    await probe(etd.port);
    await probe(etd.port, { from: '127.0.0.3', talk: 'EHLO bot\r\n' });
    await waitFor(() => etd.app.cache.size === 2, { what: 'both entries' });
    etd.app.store.flush();
    await sleep(400);
    expect(etd.app.cache.sweep()).toBe(2);
    expect(etd.app.cache.size).toBe(0);
    let left = 0;
    etd.app.store.loadCache(0, () => left++);
    expect(left).toBe(0);
  });

  it('with scope net, another address of the same IPv4 /24 skips the window; one of another /24 does not', async () => {
    const etd = await start(doc({ cache: { enabled: true, ttl: '1d', denyTtl: '1h', scope: 'net' } }));
    const first = await probe(etd.port, { from: '127.0.0.2' });
    await waitFor(() => etd.app.cache.get('127.0.0.0/24') !== undefined, { what: 'the /24 entry' });
    const sameNet = await probe(etd.port, { from: '127.0.0.9' });
    const otherNet = await probe(etd.port, { from: '127.0.1.9' });
    console.log(`scope net: 127.0.0.2 ${ms(first.bannerMs)}, 127.0.0.9 ${ms(sameNet.bannerMs)}, 127.0.1.9 ${ms(otherNet.bannerMs)}`);
    expectWindow(first, '127.0.0.2');
    expectNoWindow(sameNet, '127.0.0.9 (same /24)');
    expectWindow(otherNet, '127.0.1.9 (another /24)');
    expect(etd.app.cache.get('127.0.0.200')).toMatchObject({ key: '127.0.0.0/24', kind: 'pass' });
  });
});

describe('deny cache', () => {
  it('an early talker is turned away at once on its next connection (554 5.7.1), and the backend never sees it', async () => {
    const etd = await start(doc());
    const talker = await probe(etd.port, { talk: 'EHLO bot\r\n' });
    expect(talker.closedBy).toBe('reset');
    await waitFor(() => etd.app.cache.get('127.0.0.1')?.kind === 'deny', { what: 'the deny entry' });
    const before = backend.connections;
    const next = await probe(etd.port);
    console.log(`deny cache: 554 after ${ms(next.firstByteMs)}`);
    expectRefusedAtOnce(next, 'after talking early');
    expect(backend.connections).toBe(before);
    const sums = await etd.waitForSummaries(2);
    expect(sums[0]).toMatchObject({ verdict: 'early_talker' });
    expect(sums[1]).toMatchObject({ verdict: 'denied', cause: 'deny_cache' });
  });
});

describe('access lists', () => {
  it('allow skips the window; deny answers 554 5.7.1 at once; the most specific prefix wins', async () => {
    const etd = await start(
      doc({
        cache: { enabled: false },
        access: { allow: ['127.0.0.7/32', '127.0.1.0/24'], deny: ['127.0.0.0/24', '127.0.1.8'] },
      }),
    );
    const allowed = await probe(etd.port, { from: '127.0.0.7' }); // allow /32 inside deny /24
    const denied = await probe(etd.port, { from: '127.0.0.9' }); // deny /24
    const deniedHost = await probe(etd.port, { from: '127.0.1.8' }); // deny /32 inside allow /24
    const allowedNet = await probe(etd.port, { from: '127.0.1.9' }); // allow /24
    const unlisted = await probe(etd.port, { from: '127.0.2.1' });
    console.log(
      `access: allowed /32 ${ms(allowed.bannerMs)}, allowed /24 ${ms(allowedNet.bannerMs)}, unlisted ${ms(unlisted.bannerMs)}, ` +
        `denied /24 554 after ${ms(denied.firstByteMs)}, denied /32 554 after ${ms(deniedHost.firstByteMs)}`,
    );
    expectNoWindow(allowed, '127.0.0.7');
    expectNoWindow(allowedNet, '127.0.1.9');
    expectWindow(unlisted, '127.0.2.1');
    expectRefusedAtOnce(denied, '127.0.0.9');
    expectRefusedAtOnce(deniedHost, '127.0.1.8');
    const sums = await etd.waitForSummaries(5);
    const by = (a: string) => sums.find((s) => s.clientAddress === a);
    expect(by('127.0.0.7')).toMatchObject({ verdict: 'passed', skipped: 'allowlist' });
    expect(by('127.0.0.9')).toMatchObject({ verdict: 'denied', cause: 'access_deny' });
    expect(by('127.0.2.1')!.skipped).toBeUndefined();
  });

  it('denyAction drop: a reset, not a byte', async () => {
    const etd = await start(doc({ cache: { enabled: false }, access: { deny: ['127.0.0.8/32'], denyAction: 'drop' } }));
    const p = await probe(etd.port, { from: '127.0.0.8' });
    expect(p).toMatchObject({ data: '', closedBy: 'reset' });
    expect(p.firstByteMs).toBeUndefined();
    const sums = await etd.waitForSummaries(1);
    expect(sums[0]).toMatchObject({ verdict: 'denied', cause: 'access_deny' });
  });

  it('an allow-listed client is not remembered in the pass cache (the list decides, not the cache)', async () => {
    const etd = await start(doc({ access: { allow: ['127.0.0.7/32'] } }));
    await probe(etd.port, { from: '127.0.0.7' });
    await etd.waitForSummaries(1);
    expect(etd.app.cache.size).toBe(0);
  });
});

// ---- the API ----

interface Res {
  status: number;
  text: string;
  json: unknown;
}

async function call(base: string, method: string, url: string, body?: unknown): Promise<Res> {
  const res = await fetch(`${base}${url}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json };
}

function conforms(schema: TSchema, value: unknown): void {
  expect([...Value.Errors(schema, value)].map((e) => `${e.path}: ${e.message}`)).toEqual([]);
}

function errorOf(r: Res): string {
  return (r.json as { error?: string } | undefined)?.error ?? '';
}

describe('API: /v1/cache', () => {
  it('lists (paginated, by kind), gets and deletes entries; a deleted entry is gone after a restart too', async () => {
    const file = stateFile();
    const d = doc({ state: { path: file } });
    const { etd, url } = await startWithApi(d);
    await probe(etd.port); // pass: 127.0.0.1
    await probe(etd.port, { from: '127.0.0.2' }); // pass: 127.0.0.2
    await probe(etd.port, { from: '127.0.0.3', talk: 'EHLO bot\r\n' }); // deny: 127.0.0.3
    await waitFor(() => etd.app.cache.size === 3, { what: 'three entries' });

    const all = await call(url, 'GET', '/v1/cache');
    expect(all.status).toBe(200);
    conforms(CacheListBody, all.json);
    const list = all.json as CacheListBody;
    expect(list).toMatchObject({ enabled: true, scope: 'ip', total: 3, offset: 0, limit: 100 });
    expect(list.entries.map((e) => `${e.key} ${e.kind}`).sort()).toEqual(['127.0.0.1 pass', '127.0.0.2 pass', '127.0.0.3 deny']);
    for (const e of list.entries) expect(Date.parse(e.expires)).toBeGreaterThan(Date.now());

    const deny = (await call(url, 'GET', '/v1/cache?kind=deny')).json as CacheListBody;
    expect(deny.total).toBe(1);
    expect(deny.entries).toEqual([expect.objectContaining({ key: '127.0.0.3', kind: 'deny' })]);
    const page = (await call(url, 'GET', '/v1/cache?kind=pass&offset=1&limit=1')).json as CacheListBody;
    expect(page.total).toBe(2);
    expect(page.entries).toHaveLength(1);
    expect(page.entries[0]!.key).toBe(list.entries.filter((e) => e.kind === 'pass')[1]!.key);

    const one = await call(url, 'GET', '/v1/cache/127.0.0.3');
    expect(one.status).toBe(200);
    conforms(CacheEntryBody, one.json);
    expect(one.json).toMatchObject({ key: '127.0.0.3', kind: 'deny' });
    // The same client written as an IPv4-mapped IPv6 address.
    expect((await call(url, 'GET', '/v1/cache/::ffff:127.0.0.1')).json).toMatchObject({ key: '127.0.0.1', kind: 'pass' });
    const absent = await call(url, 'GET', '/v1/cache/127.0.0.99');
    expect(absent.status).toBe(404);
    expect(errorOf(absent)).toContain('127.0.0.99');

    // Forgetting the deny entry lets that client in again, through the window.
    const del = await call(url, 'DELETE', '/v1/cache/127.0.0.3');
    expect(del.status).toBe(204);
    expect(del.text).toBe('');
    expect((await call(url, 'DELETE', '/v1/cache/127.0.0.3')).status).toBe(404);
    expect((await call(url, 'GET', '/v1/cache/127.0.0.3')).status).toBe(404);
    const back = await probe(etd.port, { from: '127.0.0.3' });
    expectWindow(back, '127.0.0.3 after its deny entry was deleted');
    expect((await call(url, 'DELETE', '/v1/cache/127.0.0.2')).status).toBe(204);

    await stop(etd);
    const again = await startWithApi(d);
    const after = (await call(again.url, 'GET', '/v1/cache')).json as CacheListBody;
    // 127.0.0.3 passed the window after the delete, so it is a pass entry now; 127.0.0.2 stays deleted.
    expect(after.entries.map((e) => `${e.key} ${e.kind}`).sort()).toEqual(['127.0.0.1 pass', '127.0.0.3 pass']);
  });

  it('with scope net, entries are /24 keys, found by the key (URL-encoded) or by any address inside', async () => {
    const { etd, url } = await startWithApi(doc({ cache: { enabled: true, ttl: '1d', denyTtl: '1h', scope: 'net' } }));
    await probe(etd.port, { from: '127.0.0.2' });
    await waitFor(() => etd.app.cache.size === 1, { what: 'the /24 entry' });
    expect((await call(url, 'GET', '/v1/cache')).json).toMatchObject({
      scope: 'net',
      total: 1,
      entries: [{ key: '127.0.0.0/24', kind: 'pass' }],
    });
    expect((await call(url, 'GET', '/v1/cache/127.0.0.0%2F24')).json).toMatchObject({ key: '127.0.0.0/24' });
    expect((await call(url, 'GET', '/v1/cache/127.0.0.77')).json).toMatchObject({ key: '127.0.0.0/24' });
    expect((await call(url, 'DELETE', '/v1/cache/127.0.0.0%2F24')).status).toBe(204);
    expect(etd.app.cache.size).toBe(0);
  });

  it('bad input is a 400 that names the field and says why', async () => {
    const { url } = await startWithApi(doc());
    const cases: Array<[string, string, RegExp]> = [
      ['GET', '/v1/cache/not-an-ip', /path\.ip: "not-an-ip" is not an IPv4 or IPv6 address/],
      ['DELETE', '/v1/cache/300.1.2.3', /path\.ip: "300\.1\.2\.3" is not an IPv4 or IPv6 address/],
      ['GET', '/v1/cache/127.0.0.0%2F23', /path\.ip: "127\.0\.0\.0\/23" is not a cache key/],
      ['GET', '/v1/cache/127.0.0.1%2F24', /path\.ip: "127\.0\.0\.1\/24" has host bits set; did you mean 127\.0\.0\.0\/24\?/],
      ['GET', '/v1/cache?kind=maybe', /query\.kind: must be one of "pass", "deny"/],
      ['GET', '/v1/cache?limit=0', /query\.limit: must be from 1 to 1000/],
      ['GET', '/v1/cache?offset=-1', /query\.offset/],
      ['GET', '/v1/cache?colour=red', /query\.colour: unknown field/],
    ];
    for (const [method, path, want] of cases) {
      const r = await call(url, method, path);
      expect(r.status, `${method} ${path}: ${r.text}`).toBe(400);
      expect(errorOf(r), `${method} ${path}`).toMatch(want);
    }
  });
});

describe('API: /v1/access', () => {
  it('adds runtime entries that take effect at once and persist across a restart; config entries cannot be changed here', async () => {
    const file = stateFile();
    const d = doc({ cache: { enabled: false }, state: { path: file }, access: { allow: ['10.0.0.0/8'], deny: ['192.0.2.0/24'] } });
    const { etd, url } = await startWithApi(d);

    const initial = await call(url, 'GET', '/v1/access');
    expect(initial.status).toBe(200);
    conforms(AccessListBody, initial.json);
    expect(initial.json).toEqual({
      denyAction: 'reject',
      entries: [
        { cidr: '192.0.2.0/24', list: 'deny', source: 'config' },
        { cidr: '10.0.0.0/8', list: 'allow', source: 'config' },
      ],
    });

    const add = await call(url, 'POST', '/v1/access', { cidr: '127.0.0.8/32', list: 'deny' });
    expect(add.status, add.text).toBe(201);
    conforms(AccessPostBody, add.json);
    expect(add.json).toEqual({ cidr: '127.0.0.8/32', list: 'deny', source: 'runtime', replaced: false, persisted: true });
    expectRefusedAtOnce(await probe(etd.port, { from: '127.0.0.8' }), 'runtime deny');

    const allow = await call(url, 'POST', '/v1/access', { cidr: '127.0.0.7', list: 'allow' });
    expect(allow.status).toBe(201);
    expect(allow.json).toMatchObject({ cidr: '127.0.0.7/32', list: 'allow' });
    expectNoWindow(await probe(etd.port, { from: '127.0.0.7' }), 'runtime allow');

    const v6 = await call(url, 'POST', '/v1/access', { cidr: '2001:DB8:0::/48', list: 'deny' });
    expect(v6.status).toBe(201);
    expect(v6.json).toMatchObject({ cidr: '2001:db8::/48' });
    // The same prefix again, now as allow: it replaces the runtime entry.
    const replaced = await call(url, 'POST', '/v1/access', { cidr: '2001:db8::/48', list: 'allow' });
    expect(replaced.status).toBe(200);
    expect(replaced.json).toMatchObject({ cidr: '2001:db8::/48', list: 'allow', replaced: true });

    const overrideConfig = await call(url, 'POST', '/v1/access', { cidr: '10.0.0.0/8', list: 'deny' });
    expect(overrideConfig.status).toBe(409);
    expect(errorOf(overrideConfig)).toMatch(/10\.0\.0\.0\/8 is in the config file \(access\.allow\); change it there/);
    const delConfig = await call(url, 'DELETE', '/v1/access/10.0.0.0%2F8');
    expect(delConfig.status).toBe(409);
    expect(errorOf(delConfig)).toMatch(/comes from the config file \(access\.allow\); remove it there and reload/);
    expect((await call(url, 'DELETE', '/v1/access/198.51.100.0%2F24')).status).toBe(404);

    const listed = (await call(url, 'GET', '/v1/access')).json as AccessListBody;
    // Match order: longest prefix first (IPv4 and IPv6 prefixes never compete), deny before allow.
    expect(listed.entries).toEqual([
      { cidr: '2001:db8::/48', list: 'allow', source: 'runtime' },
      { cidr: '127.0.0.8/32', list: 'deny', source: 'runtime' },
      { cidr: '127.0.0.7/32', list: 'allow', source: 'runtime' },
      { cidr: '192.0.2.0/24', list: 'deny', source: 'config' },
      { cidr: '10.0.0.0/8', list: 'allow', source: 'config' },
    ]);

    // A restart on the same state file: the runtime entries are back, and in force.
    await stop(etd);
    const two = await startWithApi(d);
    expect(((await call(two.url, 'GET', '/v1/access')).json as AccessListBody).entries).toEqual(listed.entries);
    expectRefusedAtOnce(await probe(two.etd.port, { from: '127.0.0.8' }), 'runtime deny after a restart');

    // Deleting a runtime entry (URL-encoded "/") lifts it now and for good.
    const del = await call(two.url, 'DELETE', '/v1/access/127.0.0.8%2F32');
    expect(del.status).toBe(204);
    expect((await call(two.url, 'DELETE', '/v1/access/127.0.0.8%2F32')).status).toBe(404);
    expectWindow(await probe(two.etd.port, { from: '127.0.0.8' }), 'after the deny entry was deleted');
    expect((await call(two.url, 'DELETE', '/v1/access/2001:db8::%2F48')).status).toBe(204);
    await stop(two.etd);
    const three = await startWithApi(d);
    expect(((await call(three.url, 'GET', '/v1/access')).json as AccessListBody).entries.map((e) => e.cidr)).toEqual([
      '127.0.0.7/32',
      '192.0.2.0/24',
      '10.0.0.0/8',
    ]);
  });

  it('bad input is a 400 with the reason (host bits, prefix length, missing or unknown fields)', async () => {
    const { url } = await startWithApi(doc({ cache: { enabled: false } }));
    const cases: Array<[string, string, unknown, RegExp]> = [
      [
        'POST',
        '/v1/access',
        { cidr: '127.0.0.1/24', list: 'deny' },
        /body\.cidr: "127\.0\.0\.1\/24" has host bits set; did you mean 127\.0\.0\.0\/24\?/,
      ],
      [
        'POST',
        '/v1/access',
        { cidr: '2001:db8::1/32', list: 'deny' },
        /body\.cidr: "2001:db8::1\/32" has host bits set; did you mean 2001:db8::\/32\?/,
      ],
      [
        'POST',
        '/v1/access',
        { cidr: '10.0.0.0/33', list: 'deny' },
        /body\.cidr: prefix length "33" in "10\.0\.0\.0\/33" must be a whole number from 0 to 32/,
      ],
      ['POST', '/v1/access', { cidr: 'mail.example.com', list: 'deny' }, /body\.cidr: "mail\.example\.com" is not an IPv4 or IPv6 address/],
      ['POST', '/v1/access', { cidr: '10.0.0.0/8' }, /body\.list: is required/],
      ['POST', '/v1/access', { cidr: '10.0.0.0/8', list: 'block' }, /body\.list: must be one of "allow", "deny"/],
      ['POST', '/v1/access', { cidr: '10.0.0.0/8', list: 'deny', note: 'x' }, /body\.note: unknown field/],
      ['DELETE', '/v1/access/10.0.0.1%2F8', undefined, /path\.cidr: "10\.0\.0\.1\/8" has host bits set/],
      ['DELETE', '/v1/access/nonsense', undefined, /path\.cidr: "nonsense" is not an IPv4 or IPv6 address/],
    ];
    for (const [method, path, body, want] of cases) {
      const r = await call(url, method, path, body);
      expect(r.status, `${method} ${path} ${JSON.stringify(body)}: ${r.text}`).toBe(400);
      expect(errorOf(r), `${method} ${path} ${JSON.stringify(body)}`).toMatch(want);
    }
    expect(((await call(url, 'GET', '/v1/access')).json as AccessListBody).entries).toEqual([]);
  });

  it('the OpenAPI document lists the cache and access endpoints', async () => {
    const { url } = await startWithApi(doc());
    const openapi = (await call(url, 'GET', '/openapi.json')).json as {
      paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
    };
    expect(Object.keys(openapi.paths['/v1/cache']!)).toEqual(['get']);
    expect(Object.keys(openapi.paths['/v1/cache/{ip}']!).sort()).toEqual(['delete', 'get']);
    expect(Object.keys(openapi.paths['/v1/access']!).sort()).toEqual(['get', 'post']);
    expect(Object.keys(openapi.paths['/v1/access/{cidr}']!)).toEqual(['delete']);
    expect(openapi.paths['/v1/access/{cidr}']!.delete!.responses['204']).toEqual({ description: 'deleted' });
  });
});
