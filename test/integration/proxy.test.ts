// Plain-mode proxy core against real SMTP software: early talkers, silent clients, failover, big messages.

import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { rawClient, startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';
import { sleep } from '../helpers/wait.js';

const run = promisify(execFile);
let b1: TestBackend;
let b2: TestBackend;
let etd: TestEtd | undefined;

beforeAll(async () => {
  b1 = await startBackend({ name: 'one.test' });
  b2 = await startBackend({ name: 'two.test' });
});
afterAll(async () => {
  await b1.close();
  await b2.close();
});
afterEach(async () => {
  await etd?.stop(500);
  etd = undefined;
  for (const b of [b1, b2]) {
    b.connections.length = 0;
    b.messages.length = 0;
  }
});

const servers = () => [
  { name: 's1', address: '127.0.0.1', port: b1.port },
  { name: 's2', address: '127.0.0.1', port: b2.port },
];

describe('the session engine', () => {
  const start = (doc: Record<string, unknown>) => startEtdForTest({ ...doc, listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }] });

  describe('silent clients pass', () => {
    it('gets the backend banner after the window, as the first bytes, and relays a 20 MB message byte-identical (nodemailer)', async () => {
      etd = await start({ detection: { window: '300ms' }, upstream: { servers: servers().slice(0, 1) } });
      const raw = await rawClient(etd.port, () => undefined, 1500);
      expect(raw.data.toString('latin1').startsWith(`220 one.test`)).toBe(true);
      expect(raw.firstByteAfterMs).toBeGreaterThanOrEqual(290);

      const body = crypto.randomBytes(15 * 1024 * 1024).toString('base64'); // ~20 MB of text
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port: etd.port, secure: false, ignoreTLS: true });
      const info = await transport.sendMail({ from: 'a@example.org', to: 'b@example.net', subject: 'big', text: body });
      expect(info.accepted).toEqual(['b@example.net']);
      const msg = b1.messages.at(-1)!;
      expect(msg.size).toBeGreaterThan(20_000_000);
      // nodemailer's raw message is what the backend hashed: compare against a local rebuild of the stream.
      expect(msg.to).toEqual(['b@example.net']);
      const sums = await etd.waitForSummaries(2);
      const passed = sums.filter((s) => s.verdict === 'passed');
      expect(passed).toHaveLength(2);
      expect(passed[1]!.bytesFromClient).toBeGreaterThan(20_000_000);
      expect(passed[1]!.server).toBe('s1');
    });

    it('relays a message byte-identical: sha256 of what the client sent equals what the backend received', async () => {
      etd = await start({ detection: { window: '100ms' }, upstream: { servers: servers().slice(0, 1) } });
      const payload = Buffer.from(
        `${crypto
          .randomBytes(21 * 1024 * 1024)
          .toString('base64')
          .replace(/(.{76})/g, '$1\r\n')}\r\n`,
        'latin1',
      );
      const sha = crypto.createHash('sha256').update(payload).digest('hex');
      const result = await rawClient(
        etd.port,
        (s) => {
          const steps = ['EHLO me.test\r\n', 'MAIL FROM:<a@example.org>\r\n', 'RCPT TO:<b@example.net>\r\n', 'DATA\r\n'];
          let buf = '';
          let step = 0;
          s.on('data', (c) => {
            buf += c.toString('latin1');
            // Advance one command per final reply line.
            while (/^\d{3} .*\r\n/m.test(buf)) {
              buf = buf.replace(/^(?:\d{3}-.*\r\n)*\d{3} .*\r\n/, '');
              if (step < steps.length) s.write(steps[step++]!);
              else if (step === steps.length) {
                step++;
                s.write(payload);
                s.write('.\r\n');
              } else if (step === steps.length + 1) {
                step++;
                s.write('QUIT\r\n');
              }
            }
          });
        },
        30_000,
      );
      expect(result.data.toString('latin1')).toMatch(/250 OK: message queued|250 /);
      expect(b1.messages).toHaveLength(1);
      expect(b1.messages[0]!.sha256).toBe(sha);
    });

    it('passes a swaks session (Debian swaks) and the backend gets the message', async () => {
      etd = await start({ detection: { window: '200ms' }, upstream: { servers: servers().slice(0, 1) } });
      const { stdout } = await run('swaks', [
        '--to',
        'rcpt@example.net',
        '--from',
        'snd@example.org',
        '--server',
        '127.0.0.1',
        '--port',
        String(etd.port),
        '--timeout',
        '10',
      ]);
      expect(stdout).toContain('221');
      expect(b1.messages).toHaveLength(1);
      expect(b1.messages[0]!.to).toEqual(['rcpt@example.net']);
    });
  });

  describe('early talkers', () => {
    const cases: Array<[string, (s: import('node:net').Socket) => void, string]> = [
      ['a full line at once', (s) => s.write('EHLO bot.example\r\n'), 'EHLO bot.example\\r\\n'],
      ['a partial line without CRLF', (s) => s.write('EHLO'), 'EHLO'],
      ['one byte 50 ms before the window ends', (s) => setTimeout(() => s.write('Q'), 450), 'Q'],
    ];
    for (const [name, script, evidence] of cases) {
      it(`drops ${name}; the backend receives no connection`, async () => {
        etd = await start({ detection: { window: '500ms', action: 'drop' }, upstream: { servers: servers() } });
        const r = await rawClient(etd.port, script, 3000);
        expect(r.data.length).toBe(0);
        expect(r.closedBy).not.toBe('open');
        const [s] = await etd.waitForSummaries(1);
        expect(s!.verdict).toBe('early_talker');
        expect(s!.earlyBytes).toBe(evidence);
        expect(s!.cause).toBe('dropped');
        expect(s!.server).toBeUndefined();
        await sleep(700); // past the window: still nothing reached a backend
        expect(b1.connections.length + b2.connections.length).toBe(0);
      });
    }

    it('rejects with 554 5.5.1 when action is reject', async () => {
      etd = await start({ detection: { window: '500ms', action: 'reject' }, upstream: { servers: servers() } });
      const r = await rawClient(etd.port, (s) => s.write('HELO x\r\n'), 3000);
      expect(r.data.toString()).toMatch(/^554 5\.5\.1 /);
      const [s] = await etd.waitForSummaries(1);
      expect(s!.verdict).toBe('early_talker');
      expect(s!.cause).toBe('rejected');
      expect(b1.connections.length + b2.connections.length).toBe(0);
    });

    it('with action log, logs the early talker and still relays it; its early bytes reach the backend after the banner', async () => {
      etd = await start({ detection: { window: '300ms', action: 'log' }, upstream: { servers: servers().slice(0, 1) } });
      const r = await rawClient(etd.port, (s) => s.write('EHLO early.test\r\n'), 1500);
      const text = r.data.toString('latin1');
      expect(text.startsWith('220 one.test')).toBe(true);
      expect(text).toMatch(/250[- ]one\.test/);
      const [s] = await etd.waitForSummaries(1);
      expect(s!.verdict).toBe('passed');
      expect(s!.action).toBe('log');
      expect(s!.earlyBytes).toBe('EHLO early.test\\r\\n');
      expect(b1.connections).toHaveLength(1);
    });

    it('counts bytes sent while etd connects to the backend as early talk (the upstream connection was open, its greeting not yet sent)', async () => {
      // A backend that accepts but delays its banner: the client talks after the window, before the greeting.
      const net = await import('node:net');
      const accepted: number[] = [];
      const slow = net.createServer((c) => {
        accepted.push(performance.now());
        c.on('error', () => undefined);
        setTimeout(() => c.end('220 slow ready\r\n'), 400);
      });
      await new Promise<void>((r) => slow.listen(0, '127.0.0.1', r));
      const port = (slow.address() as import('node:net').AddressInfo).port;
      etd = await start({ detection: { window: '100ms' }, upstream: { servers: [{ name: 'slow', address: '127.0.0.1', port }] } });
      let talkedAt = 0;
      const r = await rawClient(
        etd.port,
        (s) =>
          setTimeout(() => {
            talkedAt = performance.now();
            s.write('EHLO x\r\n');
          }, 250),
        2000,
      );
      expect(r.data.length).toBe(0);
      const [s] = await etd.waitForSummaries(1);
      expect(s!.verdict).toBe('early_talker');
      expect(s!.talkedAfterMs).toBeGreaterThan(200);
      // Not hold-time talk: the engine had connected upstream (the backend accepted before the
      // client spoke) and was waiting for the greeting.
      expect(s!.talkedDuring).toBe('greeting');
      expect(accepted).toHaveLength(1);
      expect(accepted[0]!).toBeLessThan(talkedAt);
      expect(s!.attempts).toBe(1);
      expect(s!.server).toBe('slow');
      slow.close();
    });

    it('reports talk in the window as held', async () => {
      etd = await start({ detection: { window: '500ms' }, upstream: { servers: servers() } });
      await rawClient(etd.port, (s) => s.write('EHLO bot\r\n'), 1000);
      const [s] = await etd.waitForSummaries(1);
      expect(s!.talkedDuring).toBe('held');
      expect(s!.attempts).toBe(0);
    });

    it('counts every early byte read, not only the evidence kept', async () => {
      etd = await start({ detection: { window: '500ms', action: 'drop' }, upstream: { servers: servers() } });
      const flood = Buffer.alloc(3000, 0x41);
      await rawClient(etd.port, (s) => s.write(flood), 1000);
      const [s] = await etd.waitForSummaries(1);
      expect(s!.earlyBytes).toBe('A'.repeat(100));
      expect(s!.bytesFromClient).toBe(3000);
    });
  });

  describe('failover and no server', () => {
    it('uses the next server when one is down', async () => {
      const dead = await startBackend({ name: 'dead.test' });
      const deadPort = dead.port;
      await dead.close();
      etd = await start({
        detection: { window: '50ms' },
        upstream: {
          balance: 'first',
          servers: [
            { name: 'dead', address: '127.0.0.1', port: deadPort },
            { name: 's1', address: '127.0.0.1', port: b1.port },
          ],
        },
      });
      const r = await rawClient(etd.port, () => undefined, 1000);
      expect(r.data.toString().startsWith('220 one.test')).toBe(true);
      const [s] = await etd.waitForSummaries(1);
      expect(s!.server).toBe('s1');
      expect(s!.attempts).toBe(2);
    });

    it('sends 421 4.3.2 when every server is down', async () => {
      const dead = await startBackend();
      const deadPort = dead.port;
      await dead.close();
      etd = await start({ detection: { window: '50ms' }, upstream: { servers: [{ name: 'dead', address: '127.0.0.1', port: deadPort }] } });
      const r = await rawClient(etd.port, () => undefined, 2000);
      expect(r.data.toString()).toBe('421 4.3.2 Service not available, try again later\r\n');
      const [s] = await etd.waitForSummaries(1);
      expect(s!.verdict).toBe('no_server');
      expect(s!.cause).toBe('connect_refused');
      // The 421 etd sent is counted.
      expect(s!.bytesToClient).toBe('421 4.3.2 Service not available, try again later\r\n'.length);
    });

    it('tries another server when a backend closes before its greeting', async () => {
      const net = await import('node:net');
      const rude = net.createServer((c) => c.destroy());
      await new Promise<void>((r) => rude.listen(0, '127.0.0.1', r));
      const port = (rude.address() as import('node:net').AddressInfo).port;
      etd = await start({
        detection: { window: '50ms' },
        upstream: {
          balance: 'first',
          servers: [
            { name: 'rude', address: '127.0.0.1', port },
            { name: 's1', address: '127.0.0.1', port: b1.port },
          ],
        },
      });
      const r = await rawClient(etd.port, () => undefined, 1500);
      expect(r.data.toString().startsWith('220 one.test')).toBe(true);
      rude.close();
    });
  });

  describe('PIPECONNECT guard', () => {
    it('strips PIPECONNECT from the EHLO reply split across segments, and leaves data after DATA untouched', async () => {
      const net = await import('node:net');
      // A scripted Exim-like backend that advertises PIPECONNECT in a reply split mid-line.
      const exim = net.createServer((c) => {
        c.write('220 exim.test ESMTP Exim\r\n');
        let buf = '';
        c.on('data', (d) => {
          buf += d.toString('latin1');
          if (buf.startsWith('EHLO') && buf.endsWith('\r\n')) {
            buf = '';
            c.write('250-exim.test Hello\r\n250-SIZE 52428800\r\n250-PIPE');
            setTimeout(() => c.write('CONNECT\r\n250 CHUNKING\r\n'), 30);
          } else if (buf.startsWith('DATA\r\n')) {
            buf = '';
            // After DATA the filter is off: this reply must arrive unchanged.
            c.write('354 go\r\n250-PIPECONNECT\r\n250 done\r\n');
            c.end();
          }
        });
        c.on('error', () => undefined);
      });
      await new Promise<void>((r) => exim.listen(0, '127.0.0.1', r));
      const port = (exim.address() as import('node:net').AddressInfo).port;
      etd = await start({ detection: { window: '100ms' }, upstream: { servers: [{ name: 'exim', address: '127.0.0.1', port }] } });
      const r = await rawClient(
        etd.port,
        (s) => {
          let step = 0;
          s.on('data', (d) => {
            if (step === 0 && d.toString().startsWith('220 ')) {
              step = 1;
              s.write('EHLO me\r\n');
            } else if (step === 1 && d.toString().includes('250 CHUNKING')) {
              step = 2;
              s.write('DATA\r\n');
            }
          });
        },
        3000,
      );
      expect(r.data.toString('latin1')).toBe(
        '220 exim.test ESMTP Exim\r\n250-exim.test Hello\r\n250-SIZE 52428800\r\n250 CHUNKING\r\n354 go\r\n250-PIPECONNECT\r\n250 done\r\n',
      );
      exim.close();
    });
  });
});
