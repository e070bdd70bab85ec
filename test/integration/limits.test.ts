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
