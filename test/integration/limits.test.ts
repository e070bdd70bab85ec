// Limits (per client, held, total), the stress-adaptive window, and the teaser greeting.

import { execFile, spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { rawClient, startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';
import { sleep, waitFor } from '../helpers/wait.js';

const exec = promisify(execFile);
let backend: TestBackend;
let etd: TestEtd | undefined;

beforeAll(async () => {
  backend = await startBackend({ name: 'limits.test' });
});
afterAll(async () => backend.close());
afterEach(async () => {
  await etd?.stop(500);
  etd = undefined;
  backend.connections.length = 0;
});
const servers = () => [{ name: 'b', address: '127.0.0.1', port: backend.port }];

/** Opens `n` connections that stay silent and waits until etd holds them all; returns them for the caller to close. */
async function openSilent(t: TestEtd, n: number): Promise<net.Socket[]> {
  const port = t.port;
  const socks = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect({ port, host: '127.0.0.1' }, () => resolve(s));
          s.on('error', reject);
        }),
    ),
  );
  await waitFor(() => t.app.stats.held === n, { what: () => `${n} held connections (etd holds ${t.app.stats.held})` });
  return socks;
}

describe('limits', () => {
  it('perClient: the next connection from the same address gets 421 4.7.0 and is counted', async () => {
    etd = await startEtdForTest({ detection: { window: '3s' }, limits: { perClient: 3 }, upstream: { servers: servers() } });
    const held = await openSilent(etd, 3);
    const r = await rawClient(etd.port, () => undefined, 2000);
    expect(r.data.toString()).toBe('421 4.7.0 Too many connections from your address\r\n');
    await etd.waitForSummaries(1); // with several workers the counts reach the main thread with the summary
    expect(etd.app.stats.limits.per_client).toBe(1);
    const limit = etd.summaries.find((s) => s.verdict === 'limit')!;
    expect(limit.cause).toBe('per_client');
    for (const s of held) s.destroy();
  });

  it('maxHeld: over it, 421', async () => {
    etd = await startEtdForTest({ detection: { window: '3s' }, limits: { maxHeld: 2, perClient: 0 }, upstream: { servers: servers() } });
    const held = await openSilent(etd, 2);
    const r = await rawClient(etd.port, () => undefined, 2000);
    expect(r.data.toString()).toMatch(/^421 4\.7\.0 /);
    await etd.waitForSummaries(1); // with several workers the counts reach the main thread with the summary
    expect(etd.app.stats.limits.max_held).toBe(1);
    for (const s of held) s.destroy();
  });

  it('maxConnections: over it, 421', async () => {
    etd = await startEtdForTest({
      detection: { window: '3s' },
      limits: { maxConnections: 2, perClient: 0 },
      upstream: { servers: servers() },
    });
    const held = await openSilent(etd, 2);
    const r = await rawClient(etd.port, () => undefined, 2000);
    expect(r.data.toString()).toMatch(/^421 4\.7\.0 /);
    await etd.waitForSummaries(1); // with several workers the counts reach the main thread with the summary
    expect(etd.app.stats.limits.max_connections).toBe(1);
    for (const s of held) s.destroy();
  });
});

/** A client's connection: what it received so far, and whether etd closed it. */
interface Knock {
  readonly socket: net.Socket;
  data: string;
  closed: boolean;
}

/** Opens `n` connections from the local address `from` at once (each address of 127/8 is a client of its own). */
async function knock(port: number, n: number, from: string): Promise<Knock[]> {
  return Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<Knock>((resolve, reject) => {
          const socket = net.connect({ port, host: '127.0.0.1', localAddress: from });
          const k: Knock = { socket, data: '', closed: false };
          socket.on('data', (c) => (k.data += c.toString()));
          socket.on('close', () => (k.closed = true));
          socket.on('error', () => undefined);
          socket.once('connect', () => resolve(k));
          socket.once('error', reject);
        }),
    ),
  );
}

const RATE_REPLY = '421 4.7.0 Too many connections from your address, slow down\r\n';
const rateRefusals = (t: TestEtd) => t.summaries.filter((s) => s.verdict === 'limit' && s.cause === 'per_client_rate');

describe('limits.rate (per-client connection rate), with real sockets', () => {
  const rate = (workers: number, more: Record<string, unknown> = {}) => ({
    workers,
    detection: { window: '20s' },
    limits: { perClient: 0, rate: { perClient: 5, interval: '1m' } },
    upstream: { servers: servers() },
    ...more,
  });
  let open: Knock[] = [];
  afterEach(() => {
    for (const k of open) k.socket.destroy();
    open = [];
  });

  /** A burst of `n` from `from`, with `refused` of them expected to get the 421: waits until etd has decided each. */
  async function burst(t: TestEtd, n: number, from: string, refused: number, held: number): Promise<Knock[]> {
    const before = rateRefusals(t).length;
    const heldBefore = t.app.stats.held;
    const ks = await knock(t.port, n, from);
    open.push(...ks);
    await waitFor(() => rateRefusals(t).length - before === refused && t.app.stats.held - heldBefore === held, {
      what: () => `${refused} refusals and ${held} held (got ${rateRefusals(t).length - before} and ${t.app.stats.held - heldBefore})`,
    });
    await waitFor(() => ks.filter((k) => k.closed).length === refused, { what: `${refused} connections closed by etd` });
    return ks;
  }

  it('workers: 1: a burst of 12 from one address gets exactly 7 × 421 4.7.0 (limit 5 per minute); another address is unaffected', async () => {
    etd = await startEtdForTest(rate(1));
    const ks = await burst(etd, 12, '127.0.0.1', 7, 5);
    expect(ks.filter((k) => k.data === RATE_REPLY)).toHaveLength(7);
    expect(ks.filter((k) => k.data === '' && !k.closed)).toHaveLength(5);
    expect(etd.app.stats.limits.per_client_rate).toBe(7);
    expect(etd.app.stats.verdicts.limit).toBe(7);
    const line = rateRefusals(etd)[0]!;
    expect(line).toMatchObject({ verdict: 'limit', cause: 'per_client_rate', clientAddress: '127.0.0.1', heldMs: 0 });
    // 127.0.0.2 is another client: its own 5, then refused too.
    await burst(etd, 6, '127.0.0.2', 1, 5);
    // The first client is still over its rate (one more every 12 s).
    await burst(etd, 1, '127.0.0.1', 1, 0);
    expect(etd.app.stats.limits.per_client_rate).toBe(9);
    // /metrics-style counters carry the cause.
    expect(Object.keys(etd.app.stats.limits)).toContain('per_client_rate');
  });

  it('access.allow bypasses the rate; access.deny still wins and is not counted against it', async () => {
    etd = await startEtdForTest(rate(1, { access: { allow: ['127.0.0.3'], deny: ['127.0.0.4'] } }));
    // Allowlisted: connected to the backend at once, 20 times, never a 421.
    const ks = await knock(etd.port, 20, '127.0.0.3');
    open.push(...ks);
    await waitFor(() => ks.every((k) => k.data.startsWith('220 ')), { what: '20 backend greetings' });
    expect(rateRefusals(etd)).toHaveLength(0);
    // Denied: the deny reply, whatever the rate.
    const denied = await knock(etd.port, 8, '127.0.0.4');
    open.push(...denied);
    await waitFor(() => denied.every((k) => k.closed), { what: '8 denied connections closed' });
    expect(denied.map((k) => k.data)).toEqual(Array(8).fill('554 5.7.1 Service unavailable; client host blocked\r\n'));
    expect(rateRefusals(etd)).toHaveLength(0);
  });

  it('a reload keeps the counts when limits.rate is unchanged, and turning it off lets the client in', async () => {
    etd = await startEtdForTest(rate(1));
    await burst(etd, 5, '127.0.0.1', 0, 5);
    const c = etd.app.currentConfig;
    await etd.app.reload({ ...c, detection: { ...c.detection, windowMs: 19_000 } });
    await burst(etd, 2, '127.0.0.1', 2, 0);
    await etd.app.reload({ ...c, limits: { ...c.limits, rate: undefined } });
    await burst(etd, 2, '127.0.0.1', 0, 2);
  });

  it('workers: 2: the same burst is refused exactly, whichever engine thread took each connection (one JS thread counts them all)', async () => {
    etd = await startEtdForTest(rate(2));
    const ks = await knock(etd.port, 12, '127.0.0.1');
    open.push(...ks);
    await waitFor(() => etd!.app.stats.held + rateRefusals(etd!).length === 12, { what: '12 connections decided' });
    const split = etd.app.threads().rows.map((r) => r.accepted);
    console.log(`limits.rate, workers: 2: accepted per engine thread ${split.join(' / ')}, refused ${rateRefusals(etd).length}`);
    expect(rateRefusals(etd)).toHaveLength(7);
    await waitFor(() => ks.filter((k) => k.closed).length === 7, { what: '7 connections closed by etd' });
    expect(ks.filter((k) => k.data === RATE_REPLY)).toHaveLength(7);
    expect(etd.app.stats.held).toBe(5);
  });
});

describe('stress', () => {
  it('with above 1000, 2,000 silent connections shorten the window; it returns to normal afterwards', async () => {
    etd = await startEtdForTest({
      detection: { window: '4s', stress: { above: 1000, below: 500, window: '1s' } },
      limits: { perClient: 0, maxHeld: 5000 },
      upstream: { servers: servers() },
    });
    const child = spawn(
      process.execPath,
      [path.join(__dirname, '../helpers/loadClient.mjs'), String(etd.port), '2000', '1000', '30000', 'all-silent'],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    await new Promise((r) => child.on('exit', r));
    const result = JSON.parse(out);
    expect(result.silentPassed).toBe(2000);
    expect(etd.app.stressChanges).toBe(2); // entered, then left
    expect(etd.app.stressed).toBe(false);
    const sums = await etd.waitForSummaries(2000);
    const short = sums.filter((s) => s.heldMs < 2000).length;
    const long = sums.filter((s) => s.heldMs >= 3900).length;
    // The first ~1000 got the normal window; those that arrived under stress got the short one.
    expect(short).toBeGreaterThan(500);
    expect(long).toBeGreaterThan(500);
    expect(short + long).toBe(2000);
    // Back to normal: a new connection waits the full window again.
    const r = await rawClient(etd.port, () => undefined, 6000);
    expect(r.firstByteAfterMs).toBeGreaterThan(3900);
  }, 60_000);
});

describe('teaser', () => {
  const teaser = { detection: { window: '500ms', teaser: '220-mx.example.com ESMTP' } };

  it('a client that answers the teaser line is dropped and the backend sees no connection', async () => {
    etd = await startEtdForTest({ ...teaser, upstream: { servers: servers() } });
    const r = await rawClient(etd.port, (s) => s.once('data', () => s.write('EHLO bot\r\n')), 2000);
    expect(r.data.toString()).toBe('220-mx.example.com ESMTP\r\n');
    const [sum] = await etd.waitForSummaries(1);
    expect(sum!.verdict).toBe('early_talker');
    await sleep(600);
    expect(backend.connections).toHaveLength(0);
  });

  it('swaks and nodemailer, which wait for the final line, pass; the backend banner completes the reply', async () => {
    etd = await startEtdForTest({ ...teaser, upstream: { servers: servers() } });
    const raw = await rawClient(etd.port, () => undefined, 1500);
    expect(raw.data.toString()).toMatch(/^220-mx\.example\.com ESMTP\r\n220 limits\.test /);
    const { stdout } = await exec('swaks', [
      '--to',
      'r@example.net',
      '--server',
      '127.0.0.1',
      '--port',
      String(etd.port),
      '--timeout',
      '10',
    ]);
    expect(stdout).toMatch(/250 .*queued|250 OK/i);
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: etd.port, secure: false, ignoreTLS: true });
    const info = await t.sendMail({ from: 'a@example.org', to: 'b@example.net', text: 'hi' });
    expect(info.accepted).toEqual(['b@example.net']);
  });

  it('a backend that greets with 421 after the teaser: 220 completes the greeting, the first command gets the 421', async () => {
    const busy = net.createServer((c) => c.end('421 4.3.2 busy.test overloaded\r\n'));
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as net.AddressInfo).port;
    etd = await startEtdForTest({ ...teaser, upstream: { servers: [{ name: 'busy', address: '127.0.0.1', port }] } });
    const r = await rawClient(etd.port, (s) => s.on('data', (d) => d.toString().includes('220 ') && s.write('EHLO me\r\n')), 3000);
    expect(r.data.toString()).toBe('220-mx.example.com ESMTP\r\n220 mx.example.com ESMTP\r\n421 4.3.2 busy.test overloaded\r\n');
    const [sum] = await etd.waitForSummaries(1);
    expect(sum!.cause).toBe('server_greeting_421');
    busy.close();
  });

  it('no server after the teaser: 220 completes the greeting, the first command gets 421 4.3.2', async () => {
    const dead = await startBackend();
    const port = dead.port;
    await dead.close();
    etd = await startEtdForTest({ ...teaser, upstream: { servers: [{ name: 'dead', address: '127.0.0.1', port }] } });
    const r = await rawClient(etd.port, (s) => s.on('data', (d) => d.toString().includes('220 ') && s.write('EHLO me\r\n')), 3000);
    expect(r.data.toString()).toBe(
      '220-mx.example.com ESMTP\r\n220 mx.example.com ESMTP\r\n421 4.3.2 Service not available, try again later\r\n',
    );
  });
});
