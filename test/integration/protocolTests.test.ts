// The protocol tests (detection.protocol.*) in a whole etd against real SMTP software: good clients pass with every test at reject, scripted bots are caught before the backend sees their offending command and then refused from the deny cache.
//
// Good clients: swaks with and without --pipeline against a backend that offers PIPELINING and
// one that does not, and Python's smtplib. (Postfix's smtp client: protocolPostfix.test.ts.)
// Bots: the four of issue 24, each from its own loopback address; the recording backend's log
// of the lines it received is the proof of what got through.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { type RecordingSmtp, startRecordingSmtp } from '../helpers/recordingSmtp.js';
import { waitFor } from '../helpers/wait.js';

const SWAKS = '/usr/bin/swaks';
const PYTHON = '/usr/bin/python3';
const CI = process.env.CI === 'true' || process.env.CI === '1';
const absent = [SWAKS, PYTHON].filter((f) => !fs.existsSync(f));
if (absent.length && !CI) console.warn(`protocolTests.test.ts: skipped parts, not installed: ${absent.join(', ')}`);

/** Every test at reject: the strictest setting a good client must pass. */
const ALL_REJECT = {
  pipelining: { action: 'reject' },
  nonSmtpCommand: { action: 'reject' },
  bareNewline: { action: 'reject' },
};

function run(file: string, args: string[], timeoutMs = 30_000): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

let withPipelining: RecordingSmtp;
let withoutPipelining: RecordingSmtp;
let etdPipe: TestEtd;
let etdNoPipe: TestEtd;
let metrics: Metrics;

beforeAll(async () => {
  withPipelining = await startRecordingSmtp({ pipelining: true, name: 'pipe.test' });
  withoutPipelining = await startRecordingSmtp({ pipelining: false, name: 'nopipe.test' });
  const start = (port: number) =>
    startEtdForTest({
      detection: { window: '100ms', protocol: ALL_REJECT },
      upstream: { servers: [{ name: 'b', address: '127.0.0.1', port }] },
      // The deny cache on: a caught bot must be refused at accept next time. Good clients and
      // bots each use their own loopback address.
      cache: { enabled: true },
    });
  etdPipe = await start(withPipelining.port);
  etdNoPipe = await start(withoutPipelining.port);
  metrics = new Metrics(etdNoPipe.app, { version: 'test', processMetrics: false });
});

afterAll(async () => {
  metrics?.close();
  await etdPipe?.stop(500);
  await etdNoPipe?.stop(500);
  await withPipelining?.close();
  await withoutPipelining?.close();
});

const VARIANTS = [
  { name: 'a backend offering PIPELINING', etd: () => etdPipe, backend: () => withPipelining, client: '127.0.0.11' },
  { name: 'a backend not offering PIPELINING', etd: () => etdNoPipe, backend: () => withoutPipelining, client: '127.0.0.12' },
];

/** The summary of the last session from `client`, once it is there. */
async function summaryOf(etd: TestEtd, client: string, n: number) {
  const all = await waitFor(
    () => {
      const mine = etd.summaries.filter((s) => s.clientAddress === client);
      return mine.length >= n ? mine : undefined;
    },
    { what: `${n} summaries from ${client}` },
  );
  return all[n - 1]!;
}

describe.skipIf(absent.length > 0 && !CI)('good clients pass with every test at reject (0 false positives)', () => {
  for (const v of VARIANTS) {
    for (const pipeline of [false, true]) {
      it(`swaks${pipeline ? ' --pipeline' : ''} against ${v.name}`, async () => {
        const etd = v.etd();
        const backend = v.backend();
        const before = backend.sessions.length;
        const seen = etd.summaries.filter((s) => s.clientAddress === v.client).length;
        const r = await run(SWAKS, [
          '--server',
          '127.0.0.1',
          '--port',
          String(etd.port),
          '--local-interface',
          v.client,
          '--helo',
          'client.example',
          '--from',
          'a@example.org',
          '--to',
          'b@example.net,c@example.net,d@example.net',
          '--header',
          'Subject: protocol tests',
          '--body',
          'line one\nline two',
          '--timeout',
          '15',
          ...(pipeline ? ['--pipeline'] : []),
        ]);
        expect(r.code, r.out).toBe(0);
        // swaks groups MAIL, RCPT... and DATA (no reply read between them) only where PIPELINING is offered.
        const grouped = /-> MAIL FROM:[^\n]*\n -> RCPT TO:/.test(r.out);
        expect(grouped, r.out).toBe(pipeline && backend === withPipelining);
        const s = await summaryOf(etd, v.client, seen + 1);
        expect(s.verdict, JSON.stringify(s)).toBe('passed');
        expect(s.protocolTest).toBeUndefined();
        const session = backend.sessions[before]!;
        await waitFor(() => session.closed, { what: 'the backend session to end' });
        expect(session.messages).toBe(1);
        expect(backend.commands(session).map((l) => l.slice(0, 4))).toEqual(['EHLO', 'MAIL', 'RCPT', 'RCPT', 'RCPT', 'DATA', 'QUIT']);
      });
    }

    it(`Python smtplib against ${v.name}`, async () => {
      const etd = v.etd();
      const backend = v.backend();
      const before = backend.sessions.length;
      const client = v.client.replace(/\.(\d+)$/, (_, d: string) => `.${Number(d) + 10}`);
      const script = [
        'import smtplib, sys',
        `s = smtplib.SMTP("127.0.0.1", ${etd.port}, timeout=15, source_address=("${client}", 0))`,
        's.ehlo("client.example")',
        'refused = s.sendmail("a@example.org", ["b@example.net", "c@example.net"], "Subject: hi\\r\\n\\r\\nbody\\r\\n")',
        'print("refused", refused)',
        's.quit()',
      ].join('\n');
      const r = await run(PYTHON, ['-c', script]);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toContain('refused {}');
      const s = await summaryOf(etd, client, 1);
      expect(s.verdict, JSON.stringify(s)).toBe('passed');
      expect(s.protocolTest).toBeUndefined();
      expect(backend.sessions[before]!.messages).toBe(1);
    });
  }
});

/** A bot from `client`: after the greeting it writes `steps` (a RegExp waits for a reply); resolves with what it got and how it ended. */
function bot(port: number, client: string, steps: (string | RegExp)[]): Promise<{ got: string; how: 'end' | 'reset' | 'timeout' }> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress: client });
    let got = '';
    let done = false;
    const finish = (how: 'end' | 'reset' | 'timeout') => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ got, how });
    };
    const timer = setTimeout(() => finish('timeout'), 10_000);
    let step = 0;
    let seen = 0;
    const advance = () => {
      while (step < steps.length) {
        const next = steps[step]!;
        if (next instanceof RegExp) {
          if (!next.test(got.slice(seen))) return;
          seen = got.length;
        } else s.write(next);
        step++;
      }
    };
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      advance();
    });
    s.on('end', () => finish('end'));
    s.on('error', (e: NodeJS.ErrnoException) => finish(e.code === 'ECONNRESET' ? 'reset' : 'end'));
    s.on('close', () => finish('end'));
  });
}

const BOTS = [
  {
    name: 'pipelines MAIL/RCPT/DATA when PIPELINING was not offered',
    client: '127.0.0.31',
    steps: [/^220 /m, 'EHLO bot.example\r\n', /^250 /m, 'MAIL FROM:<spam@bot.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n'],
    test: 'pipelining',
    reached: ['EHLO bot.example\r\n'],
  },
  {
    name: 'CONNECT host:25 HTTP/1.0',
    client: '127.0.0.32',
    steps: [/^220 /m, 'CONNECT mx.example.net:25 HTTP/1.0\r\n\r\n'],
    test: 'non_smtp_command',
    reached: [],
  },
  {
    name: 'GET / HTTP/1.1',
    client: '127.0.0.33',
    steps: [/^220 /m, 'GET / HTTP/1.1\r\nHost: mx.example.net\r\n\r\n'],
    test: 'non_smtp_command',
    reached: [],
  },
  { name: 'EHLO x\\n', client: '127.0.0.34', steps: [/^220 /m, 'EHLO x\n'], test: 'bare_newline', reached: [] },
];

describe('scripted bots are caught before the backend sees the offending command, then refused from the deny cache', () => {
  for (const b of BOTS) {
    it(b.name, async () => {
      const etd = etdNoPipe;
      const backend = withoutPipelining;
      const before = backend.sessions.length;
      const r = await bot(etd.port, b.client, b.steps);
      expect(r.got).toMatch(/^220 nopipe\.test/);
      expect(r.got).toContain('550 5.5.1 Protocol error\r\n');
      expect(r.how).toBe('end');
      const s = await summaryOf(etd, b.client, 1);
      expect(s.verdict).toBe('protocol');
      expect(s.cause).toBe(b.test);
      expect(s.protocolTest).toBe(b.test);
      expect(s.protocolAction).toBe('reject');
      expect(s.protocolBytes?.length).toBeGreaterThan(0);
      // The summary line is strict JSON: no key twice.
      const line = JSON.stringify(s);
      expect(Object.keys(JSON.parse(line) as object)).toHaveLength(Object.keys(s).length);
      // What the backend got: the lines before the offending one's read, never the offending one.
      expect(backend.sessions.length).toBe(before + 1);
      const session = backend.sessions[before]!;
      await waitFor(() => session.closed, { what: 'the backend session to be closed' });
      expect(backend.commands(session)).toEqual(b.reached);
      expect(session.messages).toBe(0);

      // Next connection: refused at accept from the deny cache; the backend sees nothing.
      const again = await bot(etd.port, b.client, []);
      expect(again.got).not.toContain('220 nopipe.test');
      const s2 = await summaryOf(etd, b.client, 2);
      expect([s2.verdict, s2.cause]).toEqual(['denied', 'deny_cache']);
      expect(backend.sessions.length).toBe(before + 1);
    });
  }

  it('counts each test in the stats (GET /v1/stats, etd_protocol_tests_total)', async () => {
    const stats = etdNoPipe.app.stats.snapshot();
    expect(stats.protocolTests).toEqual({ pipelining: 1, non_smtp_command: 2, bare_newline: 1 });
    expect(stats.verdicts.protocol).toBe(4);
    const text = await metrics.text();
    const count = (test: string) =>
      Number(new RegExp(`^etd_protocol_tests_total\\{listener="test",test="${test}",action="reject"\\} (\\d+)$`, 'm').exec(text)?.[1]);
    expect([count('pipelining'), count('non_smtp_command'), count('bare_newline')], text).toEqual([1, 2, 1]);
  });
});
