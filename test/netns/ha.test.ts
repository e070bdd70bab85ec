// An HA pair with keepalived (docs/ha.md): two etd gateways in vip mode behind one VIP, real
// keepalived running the shipped examples/keepalived configs and track script, a real SMTP
// backend that records the client's address, swaks as the client.
//
//   (a) clients deliver through the VIP; the backend sees the client's own address;
//   (b) etd on the master is SIGKILLed: the track script fails, keepalived moves both VIPs, and
//       new sessions are delivered through the backup within 5 s (measured and printed);
//   (c) etd on A is started again: A becomes a healthy BACKUP and the VIPs stay on B (nopreempt,
//       as the example configures); then B's etd dies and the VIPs come back to A, delivering;
//   (d) etd doctor passes on the master; on the backup it cannot test the return path (docs/ha.md).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHaLab, type HaGateway, type HaLab } from '../../lab/haLab.js';
import { checkKeepalivedConfig, type Keepalived, startKeepalived } from '../../lab/keepalived.js';
import type { JsonLineProcess } from '../../lab/netns.js';
import { CLI, type RunningEtd, startEtdInNetns } from '../helpers/cli.js';
import { vipConfig } from '../helpers/labSuite.js';
import { swaks } from '../helpers/nsClient.js';
import { skipPrivileged, skipWithout } from '../helpers/privileged.js';
import { sleep, waitFor } from '../helpers/wait.js';

const EXAMPLES = path.join(__dirname, '../../examples/keepalived');
const skip =
  skipPrivileged('HA pair with keepalived') ||
  skipWithout('keepalived', 'keepalived', 'HA pair with keepalived') ||
  skipWithout('swaks', 'swaks', 'HA pair with keepalived');
// Only when the suite runs: a skipped suite's afterAll would not remove it.
const dir = skip ? '' : fs.mkdtempSync(path.join(os.tmpdir(), 'etd-ha-'));
let ha: HaLab;
let recorder: JsonLineProcess;
const running: RunningEtd[] = [];
const etd: Partial<Record<HaGateway, RunningEtd>> = {};
const keepalived: Partial<Record<HaGateway, Keepalived>> = {};

/** Gateway A's API is a unix socket, B's loopback TCP: the track script is exercised both ways. */
function apiOf(gw: HaGateway): string {
  return gw === 'a' ? path.join(dir, 'api-a.sock') : '127.0.0.1:8025';
}

/**
 * keepalived's environment, which the track script inherits. A: this process's (curl if
 * installed, else node asks the socket). B: a PATH with only `ip` and `node`, so its script
 * asks over bash's /dev/tcp whether or not curl is installed.
 */
function keepalivedEnv(gw: HaGateway): NodeJS.ProcessEnv {
  if (gw === 'a') return process.env;
  const bin = path.join(dir, 'bin-b');
  if (!fs.existsSync(bin)) {
    fs.mkdirSync(bin);
    fs.symlinkSync(process.execPath, path.join(bin, 'node'));
    fs.symlinkSync(execFileSync('sh', ['-c', 'command -v ip'], { encoding: 'utf8' }).trim(), path.join(bin, 'ip'));
  }
  return { ...process.env, PATH: bin };
}

function etdConfig(gw: HaGateway): string {
  const file = path.join(dir, `etd-${gw}.yaml`);
  const api = gw === 'a' ? `{ enabled: true, address: ${apiOf('a')} }` : '{ enabled: true, address: 127.0.0.1, port: 8025 }';
  fs.writeFileSync(
    file,
    vipConfig({
      listenerLines: [`{ name: vip, address: ${ha.v4.vipClient}, port: 25, mode: vip, freebind: true }`],
      servers: { b4: ha.v4.backends[0] },
      window: '300ms',
      api,
    }),
  );
  return file;
}

/**
 * The shipped track script, copied byte for byte into this test's private directory (root, 0700):
 * keepalived's enable_script_security refuses a script whose path a non-root user could change,
 * and a checkout may live anywhere.
 */
function trackScript(): string {
  const file = path.join(dir, 'etd-health.sh');
  if (!fs.existsSync(file)) fs.copyFileSync(path.join(EXAMPLES, 'etd-health.sh'), file);
  fs.chmodSync(file, 0o755);
  return file;
}

/** The shipped example for gateway `gw`, with the lab's interfaces, VIPs, script path and API address. */
function keepalivedConfig(gw: HaGateway): string {
  let text = fs.readFileSync(path.join(EXAMPLES, `keepalived-${gw}.conf`), 'utf8');
  const subst: Array<[RegExp, string]> = [
    [/\beth0\b/g, ha.ifaces.clientSide],
    [/\beth1\b/g, ha.ifaces.backendSide],
    [/192\.0\.2\.25\/24/g, `${ha.v4.vipClient}/${ha.v4.prefix}`],
    [/198\.51\.100\.1\/24/g, `${ha.v4.vipBackend}/${ha.v4.prefix}`],
    [/"\/etc\/keepalived\/etd-health\.sh 127\.0\.0\.1:8025 \/healthz"/g, `"${trackScript()} ${apiOf(gw)} /healthz"`],
  ];
  for (const [re, to] of subst) {
    expect(text, `examples/keepalived/keepalived-${gw}.conf no longer contains ${re.source}: update this test`).toMatch(re);
    text = text.replace(re, to);
  }
  return text;
}

async function startEtd(gw: HaGateway): Promise<RunningEtd> {
  const e = await startEtdInNetns(ha.ns[gw], etdConfig(gw), running, 20_000);
  etd[gw] = e;
  return e;
}

async function killEtd(gw: HaGateway): Promise<void> {
  const e = etd[gw]!;
  e.child.kill('SIGKILL');
  expect(await e.exited).toBe(null);
}

/** Whether gateway `gw` holds the client-side and the backend-side VIP. */
async function holdsVips(gw: HaGateway): Promise<{ client: boolean; backend: boolean }> {
  const r = await ha.exec(ha.ns[gw], 'ip', ['-4', '-o', 'addr', 'show']);
  return { client: r.stdout.includes(` ${ha.v4.vipClient}/`), backend: r.stdout.includes(` ${ha.v4.vipBackend}/`) };
}

/** A client in the middle of a relayed session: greeting read, EHLO answered; prints how the connection ended. */
const RELAYING = `
const net = require('net');
const [host] = process.argv.slice(1);
const out = (o) => console.log(JSON.stringify(o));
const s = net.connect({ host, port: 25 });
let data = '', said = false;
s.on('data', (d) => {
  data += d;
  if (!said && /^220 /m.test(data)) { said = true; s.write('EHLO relaying.example\\r\\n'); }
  if (said && /^250 /m.test(data)) { data = ''; said = null; out({ event: 'relaying' }); }
});
const end = (how) => { out({ event: 'ended', how }); process.exit(0); };
s.on('error', (e) => end(e.code));
s.on('close', () => end('closed'));
setTimeout(() => end('timeout'), 20000);
`;

const passedOn = (gw: HaGateway): number => (etd[gw]?.lines ?? []).filter((l) => l.msg === 'session' && l.verdict === 'passed').length;
const messagesFromClient = (): number => recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === ha.v4.client).length;

/** One SMTP session from the client to the VIP; resolves when the backend recorded it from the client's own address, and says which gateway relayed it. */
async function deliver(timeoutS = 15): Promise<HaGateway> {
  const before = { a: passedOn('a'), b: passedOn('b'), msgs: messagesFromClient() };
  const out = await swaks(ha.lab, ha.v4.vipClient, 25, ['--timeout', String(timeoutS)]);
  expect(out).toMatch(/<- +250 Queued/);
  await recorder.waitFor(() => messagesFromClient() > before.msgs, 5000);
  // The session's summary is written when both sides have closed, which can trail swaks a little.
  await waitFor(() => passedOn('a') !== before.a || passedOn('b') !== before.b, {
    timeout: 5000,
    interval: 50,
    what: "the session's summary line",
  });
  const onA = passedOn('a') - before.a;
  const onB = passedOn('b') - before.b;
  expect(onA + onB, 'exactly one gateway relayed the session').toBe(1);
  return onA === 1 ? 'a' : 'b';
}

/**
 * Kills etd on `from` and measures, from the kill, when keepalived on `to` enters MASTER and when
 * the first new session is delivered through it (a client retrying every 200 ms, as senders retry).
 */
async function failover(from: HaGateway, to: HaGateway): Promise<{ vipMs: number; deliveredMs: number }> {
  const since = keepalived[to]!.lines.length;
  const t0 = Date.now();
  await killEtd(from);
  const vipMoved = keepalived[to]!.waitForState('MASTER', 10_000, since).then(() => Date.now() - t0);
  let deliveredMs: number | undefined;
  const failures: string[] = [];
  for (let attempt = 0; attempt < 60 && Date.now() - t0 < 10_000; attempt++) {
    try {
      const via = await deliver(2);
      expect(via).toBe(to);
      deliveredMs = Date.now() - t0;
      break;
    } catch (e) {
      // Keep the end of the first line (the exit code or the assertion), not swaks' whole command line.
      failures.push(`${Date.now() - t0} ms: ${(String((e as Error).message).split('\n')[0] ?? '').slice(-60)}`);
      await sleep(200);
    }
  }
  const vipMs = await vipMoved;
  expect(
    deliveredMs,
    `no session delivered through ${to} within 10 s of the kill; attempts: ${failures.slice(-8).join(' | ')}`,
  ).toBeDefined();
  return { vipMs, deliveredMs: deliveredMs! };
}

describe.skipIf(skip)('HA pair with keepalived', () => {
  beforeAll(async () => {
    ha = await createHaLab();
    recorder = await ha.startRecorder(ha.ns.backend, [{ address: ha.v4.backends[0], port: 25 }]);
    // Both etds listen on the VIP (freebind) before either gateway holds it.
    await Promise.all([startEtd('a'), startEtd('b')]);
    for (const gw of ['a', 'b'] as const) await checkKeepalivedConfig(ha, ha.ns[gw], keepalivedConfig(gw));
    // A first, so it is the master; B then joins as BACKUP.
    keepalived.a = await startKeepalived(ha, ha.ns.a, keepalivedConfig('a'), { env: keepalivedEnv('a') });
    await keepalived.a.waitForState('MASTER', 15_000);
    keepalived.b = await startKeepalived(ha, ha.ns.b, keepalivedConfig('b'), { env: keepalivedEnv('b') });
    await keepalived.b.waitForState('BACKUP', 15_000);
  }, 90_000);

  afterAll(async () => {
    for (const k of Object.values(keepalived)) await k?.stop();
    for (const e of running) e.child.kill('SIGKILL');
    await ha?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('(a) clients deliver through the VIP held by A; the backend sees the client address', async () => {
    // The track script runs (keepalived disables one it deems unsafe, and then nothing would fail over).
    for (const gw of ['a', 'b'] as const) {
      await keepalived[gw]!.waitForLine(/VRRP_Script\(etd_health\) succeeded/, 5000);
      expect(keepalived[gw]!.lines.join('\n'), `keepalived ${gw}`).not.toMatch(/unsafe|disabl/i);
    }
    expect(await holdsVips('a')).toEqual({ client: true, backend: true });
    expect(await holdsVips('b')).toEqual({ client: false, backend: false });
    for (let i = 0; i < 3; i++) expect(await deliver()).toBe('a');
    const msgs = recorder.events.filter((e) => e.event === 'message');
    expect(msgs.length).toBeGreaterThanOrEqual(3);
    for (const m of msgs) expect(m.remoteAddress).toBe(ha.v4.client);
  }, 60_000);

  it('(b) SIGKILL of etd on the master: its relayed session breaks, keepalived moves both VIPs to B and sessions deliver through B within 5 s', async () => {
    // A session being relayed through A when A's etd dies: it ends, it is not carried over.
    const relaying = ha.spawnJson(ha.ns.client, process.execPath, ['-e', RELAYING, ha.v4.vipClient]);
    await relaying.waitFor((e) => e.event === 'relaying', 10_000);
    const { vipMs, deliveredMs } = await failover('a', 'b');
    const ended = await relaying.waitFor((e) => e.event === 'ended', 5000);
    expect(['closed', 'ECONNRESET', 'EPIPE']).toContain(ended.how);
    console.log(`HA failover A -> B: VIP moved ${vipMs} ms after the SIGKILL, first session delivered through B after ${deliveredMs} ms`);
    expect(keepalived.a!.state()).toBe('FAULT');
    expect(keepalived.a!.lines.some((l) => /etd_health/.test(l) && /fail|failed/i.test(l))).toBe(true);
    expect(await holdsVips('a')).toEqual({ client: false, backend: false });
    expect(await holdsVips('b')).toEqual({ client: true, backend: true });
    expect(deliveredMs).toBeLessThan(5000);
    expect(await deliver()).toBe('b');
    const last = recorder.events.filter((e) => e.event === 'message').at(-1);
    expect(last?.remoteAddress).toBe(ha.v4.client);
  }, 60_000);

  it('(c) etd on A starts again: A is a healthy BACKUP, the VIPs stay on B (nopreempt); when B fails they return to A', async () => {
    const since = keepalived.a!.lines.length;
    await startEtd('a');
    await keepalived.a!.waitForState('BACKUP', 10_000, since);
    // nopreempt: A has the higher priority but does not take the VIPs back (that would break B's relayed sessions again).
    await sleep(3000);
    expect(keepalived.a!.state()).toBe('BACKUP');
    expect(keepalived.b!.state()).toBe('MASTER');
    expect(await holdsVips('b')).toEqual({ client: true, backend: true });
    expect(await holdsVips('a')).toEqual({ client: false, backend: false });
    expect(await deliver()).toBe('b');

    // A is a real standby again: B's etd dies and the pair fails back to A.
    const { vipMs, deliveredMs } = await failover('b', 'a');
    console.log(`HA failover B -> A: VIP moved ${vipMs} ms after the SIGKILL, first session delivered through A after ${deliveredMs} ms`);
    expect(deliveredMs).toBeLessThan(5000);
    expect(await holdsVips('a')).toEqual({ client: true, backend: true });
    expect(keepalived.b!.state()).toBe('FAULT');
    const last = recorder.events.filter((e) => e.event === 'message').at(-1);
    expect(last?.remoteAddress).toBe(ha.v4.client);
  }, 90_000);

  it('(d) etd doctor: on the master every check passes, the return path included; on the backup the return path is not tested (a warning, no failure)', async () => {
    // After (c), A is the master and B (its etd killed) holds no VIP. The doctor needs no running etd.
    const doctor = (gw: HaGateway) =>
      ha.exec(ha.ns[gw], process.execPath, [CLI, 'doctor', '-c', path.join(dir, `etd-${gw}.yaml`)], {
        allowFailure: true,
        timeoutMs: 60_000,
      });
    const master = await doctor('a');
    expect(master.code, master.stdout + master.stderr).toBe(0);
    expect(master.stdout).toMatch(/^OK +return\.b4 /m);
    expect(master.stdout).toMatch(/0 FAIL, 0 WARN/);
    const backup = await doctor('b');
    expect(backup.code, backup.stdout + backup.stderr).toBe(0);
    expect(backup.stdout).toMatch(/^WARN +client\.v4 [\s\S]*no IPv4 client-side network found/m);
    expect(backup.stdout).toMatch(/^WARN +return\.b4 [\s\S]*not tested/m);
    expect(backup.stdout).toMatch(/0 FAIL/);
  }, 120_000);
});
