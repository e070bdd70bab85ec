// Backend faults: dies mid-DATA (FIN or RST), resets after 354, never greets, is blackholed (netns) — the client gets a
// clean close or a 421, never a 250 for a message the backend did not take, and the session summary names the cause.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Sink, sendMail, startSink } from '../../bench/smtpPeers.js';
import { createLab, type JsonLineProcess, type Lab } from '../../lab/netns.js';
import { type RunningEtd, runEtd } from '../helpers/cli.js';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { fdCount } from '../helpers/leak.js';
import { skipPrivileged } from '../helpers/privileged.js';
import { waitFor } from '../helpers/wait.js';

let sink: Sink;
let etd: TestEtd;
let baseFds = 0;
let tagNo = 0;

beforeAll(async () => {
  sink = await startSink({ name: 'faulty.sink' });
  etd = await startEtdForTest({
    detection: { window: '200ms' },
    upstream: { retries: 0, servers: [{ name: 'sink', address: '127.0.0.1', port: sink.port }] },
    timeouts: { client: '10s', server: '1s', shutdownGrace: '1s' },
  });
  const warm = await sendMail({ port: etd.port, tag: 'warmup@faults.test' });
  expect(warm.delivered).toBe(true);
  await waitFor(() => etd.app.sessions.size === 0 && sink.open.size === 0, { what: 'warm-up session to end' });
  baseFds = fdCount();
});

afterAll(async () => {
  await etd?.stop(500);
  await sink?.close();
});

afterEach(async () => {
  sink.fault = 'none';
  // Whatever the fault, nothing may stay behind: no session, no backend connection, no fd.
  await waitFor(() => etd.app.sessions.size === 0, { what: () => `sessions to end (${etd.app.sessions.size})`, timeout: 15_000 });
  expect(etd.app.pool.get('sink')?.active).toBe(0);
  await waitFor(() => fdCount() <= baseFds + 3, { what: () => `fds back to ${baseFds} (now ${fdCount()})`, timeout: 15_000 });
  const after = await sendMail({ port: etd.port, tag: `after-${++tagNo}@faults.test` });
  expect(after.delivered, 'etd still serves after the fault').toBe(true);
  await waitFor(() => etd.app.sessions.size === 0, { what: 'the check session to end' });
  etd.summaries.length = 0;
});

/** The summary of the (single) faulted session. */
async function faultSummary() {
  await waitFor(() => etd.summaries.length >= 1, {
    what: () => `the faulted session's summary (${etd.summaries.length})`,
    timeout: 15_000,
  });
  return etd.summaries[0]!;
}

describe('backend faults (loopback)', () => {
  for (const fault of ['finMidData', 'rstMidData'] as const) {
    const how = fault === 'finMidData' ? 'closes (FIN)' : 'dies (RST)';
    it(`the backend ${how} in the middle of DATA: the client gets a clean close, no 250, and the summary names the cause`, async () => {
      sink.fault = fault;
      const before = sink.messages.length;
      const r = await sendMail({ port: etd.port, tag: `mid-${fault}@faults.test`, bodyBytes: 200_000, timeoutMs: 15_000 });
      expect(r.delivered).toBe(false);
      expect(r.codes).toEqual([220, 250, 250, 250, 354]);
      // A FIN from etd, not a reset, and at once (not after a linger timeout).
      expect(r.ended).toBe('end');
      expect(r.ms).toBeLessThan(3000);
      expect(sink.messages.length).toBe(before);
      const s = await faultSummary();
      expect(s.verdict).toBe('passed');
      expect(s.cause).toBe(fault === 'finMidData' ? 'server_closed' : 'server_reset');
    });
  }

  it('the backend resets right after its 354: the client gets a clean close and no 250; nodemailer reports a failure (so the sender retries)', async () => {
    sink.fault = 'rstAfter354';
    const r = await sendMail({ port: etd.port, tag: 'rst354@faults.test', bodyBytes: 50_000 });
    expect(r.delivered).toBe(false);
    expect(r.codes.slice(0, 5)).toEqual([220, 250, 250, 250, 354]);
    expect(r.ended).toBe('end');
    const s = await faultSummary();
    // The RST arrives while etd forwards the body: the failed write consumes the socket error, and
    // the next read sees a plain EOF first (Linux), so the cause may be either word for the same event.
    expect(['server_reset', 'server_closed']).toContain(s.cause);
    etd.summaries.length = 0;

    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: etd.port,
      secure: false,
      ignoreTLS: true,
      connectionTimeout: 5000,
      socketTimeout: 5000,
    });
    const err = await transport.sendMail({ from: 'a@client.test', to: 'b@backend.test', subject: 'rst', text: 'x'.repeat(10_000) }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err, 'nodemailer must not report success').toBeInstanceOf(Error);
    transport.close();
    await faultSummary();
  });

  it('the backend accepts but never greets: the server timeout fires and the client gets 421', async () => {
    sink.fault = 'silent';
    const t0 = performance.now();
    const r = await sendMail({ port: etd.port, tag: 'silent@faults.test' });
    const ms = performance.now() - t0;
    expect(r.delivered).toBe(false);
    expect(r.codes[0]).toBe(421);
    expect(r.last).toMatch(/^421 4\.3\.2 /);
    // window 200 ms + server timeout 1 s
    expect(ms).toBeGreaterThan(1100);
    expect(ms).toBeLessThan(4000);
    const s = await faultSummary();
    expect(s.verdict).toBe('no_server');
    expect(s.cause).toBe('server_greeting_timeout');
  });
});

const skipLab = skipPrivileged('blackholed backend (netns)');

describe.skipIf(skipLab)('a blackholed backend (netns lab)', () => {
  let lab: Lab;
  let recorder: JsonLineProcess;
  let running: RunningEtd | undefined;
  let dir = '';

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-blackhole-'));
    lab = await createLab();
    recorder = await lab.startRecorder(lab.ns.backend, [{ address: lab.v4.backends[0], port: 25 }]);
    // Everything to the second backend address vanishes: no RST, no ICMP — only the connect timeout can tell.
    await lab.exec(lab.ns.backend, 'nft', ['-f', '-'], {
      input: `table inet blackhole {\n chain in {\n  type filter hook input priority 0; policy accept;\n  ip daddr ${lab.v4.backends[1]} drop\n }\n}\n`,
    });
  }, 60_000);

  afterAll(async () => {
    if (running) {
      running.child.kill('SIGKILL');
      await running.exited;
    }
    await lab?.destroy();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  function config(servers: string, retries: number): string {
    const file = path.join(dir, `etd-${retries}.yaml`);
    fs.writeFileSync(
      file,
      `
listeners:
  - { name: smtp, address: ${lab.v4.gatewayClientSide}, port: 25, mode: plain }
detection: { window: 200ms }
upstream:
  source: self
  balance: first
  connectTimeout: 1s
  retries: ${retries}
  passiveFall: 0
  health: { enabled: false }
  servers:
${servers}
api: { enabled: false }
state: { path: ":memory:" }
cache: { enabled: false }
log: { level: info }
`,
    );
    return file;
  }

  async function swaks(): Promise<{ out: string; ms: number }> {
    const t0 = performance.now();
    const r = await lab.exec(
      lab.ns.client,
      'swaks',
      [
        '--server',
        lab.v4.gatewayClientSide,
        '--port',
        '25',
        '--to',
        'b@backend.test',
        '--from',
        'a@client.test',
        '--timeout',
        '15',
        '--helo',
        'client.test',
      ],
      { timeoutMs: 30_000, allowFailure: true },
    );
    return { out: r.stdout + r.stderr, ms: performance.now() - t0 };
  }

  it('the connect timeout fires: 421 after window + connectTimeout; with a second server, the retry delivers', async () => {
    const hole = `    - { name: hole, address: ${lab.v4.backends[1]}, port: 25 }`;
    const good = `    - { name: good, address: ${lab.v4.backends[0]}, port: 25 }`;
    const file = config(hole, 0);
    running = runEtd(file, ['ip', 'netns', 'exec', lab.ns.gateway]);
    await running.waitFor((l) => l.msg === 'etd started', 15_000);

    const lone = await swaks();
    expect(lone.out).toMatch(/<\*\* +421 4\.3\.2/);
    expect(lone.ms).toBeGreaterThan(1100);
    expect(lone.ms).toBeLessThan(6000);
    const s1 = await running.waitFor((l) => l.msg === 'session' && l.verdict === 'no_server');
    expect(s1.cause).toBe('connect_timeout');
    expect(s1.server).toBe('hole');
    expect(Number(s1.durationMs)).toBeGreaterThanOrEqual(1150);

    fs.writeFileSync(file, fs.readFileSync(config(`${hole}\n${good}`, 1), 'utf8'));
    running.child.kill('SIGHUP');
    await running.waitFor((l) => l.msg === 'configuration reloaded');
    const retried = await swaks();
    expect(retried.out).toMatch(/<- +250 .*Queued/);
    const s2 = await running.waitFor((l) => l.msg === 'session' && l.verdict === 'passed');
    expect(s2.server).toBe('good');
    expect(s2.attempts).toBe(2);
    await recorder.waitFor((e) => e.event === 'message', 5000);

    running.child.kill('SIGTERM');
    expect(await running.exited).toBe(0);
    running = undefined;
  }, 60_000);
});
