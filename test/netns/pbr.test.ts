// Deployment picture 2 end to end: the backends' default route points at a router, not etd; the router applies
// scripts/pbr-linux.sh (ip rule sport 25, then the nftables-mark variant) and sessions relay with the client's IP preserved.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPbrLab, type PbrLab } from '../../lab/pbrLab.js';
import type { JsonLineProcess } from '../../lab/netns.js';
import type { Finding } from '../../src/doctor/checks.js';
import { skipPrivileged } from '../helpers/privileged.js';
import { CLI, runEtd, type RunningEtd } from '../helpers/cli.js';

const skip = skipPrivileged('PBR router lab');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-pbr-'));
const SCRIPT = path.join(__dirname, '../../scripts/pbr-linux.sh');
let lab: PbrLab;
let recorder: JsonLineProcess;
let etd: RunningEtd | undefined;
let file: string;

/** Runs pbr-linux.sh in the router namespace; throws on a non-zero exit. */
async function pbr(action: 'apply' | 'remove' | 'show', extra: readonly string[] = []): Promise<string> {
  const args = [
    SCRIPT,
    action,
    '--etd', lab.v4.etd,
    '--etd', lab.v6.etd,
    '--from', lab.v4.backendNet,
    '--from', lab.v6.backendNet,
    '--iif', lab.ifaces.routerToBackend,
    ...extra,
  ];
  const r = await lab.exec(lab.ns.router, 'bash', args, { timeoutMs: 20_000 });
  return r.stdout + r.stderr;
}

async function routerRules(): Promise<{ v4: string; v6: string }> {
  const [v4, v6] = await Promise.all([lab.exec(lab.ns.router, 'ip', ['-4', 'rule', 'show']), lab.exec(lab.ns.router, 'ip', ['-6', 'rule', 'show'])]);
  return { v4: v4.stdout, v6: v6.stdout };
}

/** A swaks session from the client namespace to `server`:25. */
async function swaks(server: string): Promise<string> {
  const r = await lab.exec(
    lab.ns.client,
    'swaks',
    ['--to', 'rcpt@example.net', '--from', 'sender@example.org', '--server', server, '--port', '25', '--timeout', '15', '--helo', 'client.example'],
    { timeoutMs: 30_000, allowFailure: true },
  );
  return r.stdout + r.stderr;
}

const EARLY = `
const net = require('net');
const [host] = process.argv.slice(1);
const s = net.connect({ host, port: 25 }, () => s.write('EHLO bot.example\\r\\n'));
let data = '';
s.on('data', (d) => (data += d));
const done = (how) => { console.log(JSON.stringify({ how, data })); process.exit(0); };
s.on('error', (e) => done(e.code));
s.on('close', () => done('closed'));
setTimeout(() => done('timeout'), 8000);
`;

async function earlyTalker(server: string): Promise<{ how: string; data: string }> {
  const r = await lab.exec(lab.ns.client, process.execPath, ['-e', EARLY, server], { timeoutMs: 15_000 });
  return JSON.parse(r.stdout.trim()) as { how: string; data: string };
}

async function doctor(extra: readonly string[] = []): Promise<Finding[]> {
  const r = await lab.exec(lab.ns.etd, process.execPath, [CLI, 'doctor', '-c', file, '--json', ...extra], { allowFailure: true, timeoutMs: 30_000 });
  return (JSON.parse(r.stdout) as { findings: Finding[] }).findings;
}
const statusOf = (fs: readonly Finding[], id: string) => fs.find((f) => f.id === id)?.status;

const connectsFrom = (addr: string) => recorder.events.filter((e) => e.event === 'connect' && e.remoteAddress === addr).length;

/** Both families relay with the client's address; early talkers never reach the backend. */
async function expectRelayed(label: string): Promise<void> {
  for (const [family, client, server] of [
    ['v4', lab.v4.client, lab.v4.etd],
    ['v6', lab.v6.client, lab.v6.etd],
  ] as const) {
    const before = recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === client).length;
    const out = await swaks(server);
    expect(out, `${label} ${family}: ${out}`).toMatch(/<- +250 Queued/);
    await recorder.waitFor((e) => e.event === 'message' && e.remoteAddress === client && recorder.events.filter((x) => x.event === 'message' && x.remoteAddress === client).length > before, 5000);

    const connects = connectsFrom(client);
    const early = await earlyTalker(server);
    expect(early.data, `${label} ${family}`).toBe('');
    await new Promise((r) => setTimeout(r, 800)); // past the window
    expect(connectsFrom(client), `${label} ${family}: an early talker reached the backend`).toBe(connects);
  }
}

describe.skipIf(skip)('PBR lab: router policy route instead of etd as the default gateway', () => {
  beforeAll(async () => {
    lab = await createPbrLab();
    recorder = await lab.startRecorder(lab.ns.backend, [
      { address: lab.v4.backends[0], port: 25 },
      { address: lab.v6.backends[0], port: 25 },
    ]);
    file = path.join(dir, 'etd.yaml');
    fs.writeFileSync(
      file,
      `
listeners:
  - { name: smtp4, address: ${lab.v4.etd}, port: 25, mode: vip }
  - { name: smtp6, address: "${lab.v6.etd}", port: 25, mode: vip }
detection: { window: 500ms, action: drop }
upstream:
  source: clientip
  connectTimeout: 3s
  retries: 0
  health: { enabled: false }
  servers:
    - { name: b4, address: ${lab.v4.backends[0]}, port: 25 }
    - { name: b6, address: "${lab.v6.backends[0]}", port: 25 }
api: { enabled: false }
# Every session must meet the window (no pass/deny cache), and nothing is written outside the lab.
cache: { enabled: false }
state: { path: ":memory:" }
`,
    );
    etd = runEtd(file, ['ip', 'netns', 'exec', lab.ns.etd]);
    await etd.waitFor((l) => l.msg === 'etd started', 15_000);
  }, 60_000);

  afterAll(async () => {
    if (etd) {
      etd.child.kill('SIGTERM');
      await Promise.race([etd.exited, new Promise((r) => setTimeout(r, 10_000))]);
      etd.child.kill('SIGKILL');
    }
    await lab?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("the backends' default route points at the router, and without PBR their replies bypass etd", async () => {
    const route = await lab.exec(lab.ns.backend, 'ip', ['-4', 'route', 'show', 'default']);
    expect(route.stdout).toContain(`via ${lab.v4.routerBackendSide}`);
    expect(route.stdout).not.toContain(lab.v4.etd);
    const findings = await doctor();
    expect(statusOf(findings, 'return.b4')).toBe('FAIL');
    expect(statusOf(findings, 'return.b6')).toBe('FAIL');
    expect(findings.find((f) => f.id === 'return.b4')?.fix).toContain(`pbr-linux.sh apply --etd ${lab.v4.etd}`);
  }, 60_000);

  it('ip rule sport 25 on the router: relayed with the client IP preserved (IPv4, IPv6); the doctor passes; remove restores the rules', async () => {
    const before = await routerRules();
    await pbr('apply');
    await pbr('apply'); // idempotent: still one rule per family
    const during = await routerRules();
    expect(during.v4.match(/ipproto tcp sport 25 lookup 125/g)).toHaveLength(1);
    expect(during.v6.match(/ipproto tcp sport 25 lookup 125/g)).toHaveLength(1);
    expect(await pbr('show')).toMatch(/^1000:\s+from .* iif veth-gb ipproto tcp sport 25 lookup 125/m);

    await expectRelayed('ip rule');
    const findings = await doctor();
    expect(findings.filter((f) => f.status !== 'OK').map((f) => `${f.id}: ${f.detail}`)).toEqual([]);
    // A real client network behind the router, which also exercises the router's reverse-path filter.
    expect(statusOf(await doctor(['--client', `10.${lab.x}.1.254`]), 'return.b4')).toBe('OK');

    await pbr('remove');
    await pbr('remove'); // idempotent
    expect(await routerRules()).toEqual(before);
    const table = await lab.exec(lab.ns.router, 'ip', ['-4', 'route', 'show', 'table', '125'], { allowFailure: true });
    expect(table.stdout.trim()).toBe('');
  }, 120_000);

  it('the nftables-mark variant works the same, and remove leaves rules and nft ruleset as before', async () => {
    const before = await routerRules();
    const nftBefore = (await lab.exec(lab.ns.router, 'nft', ['list', 'ruleset'])).stdout;
    await pbr('apply', ['--mark', '0x25']);
    await pbr('apply', ['--mark', '0x25']);
    const during = await routerRules();
    expect(during.v4.match(/fwmark 0x25 lookup 125/g)).toHaveLength(1);
    expect((await lab.exec(lab.ns.router, 'nft', ['list', 'table', 'inet', 'etd_pbr'])).stdout).toMatch(/tcp sport 25 meta mark set 0x00000025/);

    await expectRelayed('nft mark');

    await pbr('remove', ['--mark', '0x25']);
    expect(await routerRules()).toEqual(before);
    expect((await lab.exec(lab.ns.router, 'nft', ['list', 'ruleset'])).stdout).toBe(nftBefore);
  }, 120_000);
});
