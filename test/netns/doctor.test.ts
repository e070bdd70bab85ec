// `etd doctor` in the netns lab: all OK on a correct lab; FAIL with the right fix for a missing ip rule, src_valid_mark=1,
// strict rp_filter, and a backend whose return route does not point at etd; intercept mode's `--probe`. (`etd run`
// refusing to start on a critical FAIL: test/netns/preflight.test.ts.)
//
// etd's rules are applied with the built CLI (`etd rules apply`) inside the gateway namespace;
// each case breaks one thing, runs `etd doctor` there, and restores it.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLab, type JsonLineProcess, type Lab } from '../../lab/netns.js';
import type { Finding } from '../../src/doctor/checks.js';
import { assertBuilt, CLI } from '../helpers/cli.js';
import { skipPrivileged } from '../helpers/privileged.js';

const skip = skipPrivileged('etd doctor in the lab');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-doctor-'));
let lab: Lab;
let recorder: JsonLineProcess;
let file: string;

interface Report {
  ok: boolean;
  summary: Record<'OK' | 'WARN' | 'FAIL', number>;
  findings: Finding[];
}

async function etdCli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return lab.exec(lab.ns.gateway, process.execPath, [CLI, ...args], { allowFailure: true, timeoutMs: 30_000 });
}

async function doctor(extra: readonly string[] = []): Promise<Report & { code: number | null }> {
  const r = await etdCli(['doctor', '-c', file, '--json', ...extra]);
  let report: Report;
  try {
    report = JSON.parse(r.stdout) as Report;
  } catch {
    throw new Error(`doctor did not print JSON (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  }
  return { ...report, code: r.code };
}

const find = (r: Report, id: string): Finding => {
  const f = r.findings.find((x) => x.id === id);
  if (!f) throw new Error(`no finding ${id}; got ${r.findings.map((x) => x.id).join(', ')}`);
  return f;
};
const notOk = (r: Report) => r.findings.filter((f) => f.status !== 'OK').map((f) => `${f.status} ${f.id}: ${f.detail}`);
const gw = (cmd: string, ...args: string[]) => lab.exec(lab.ns.gateway, cmd, args);
const sysctl = (...kv: string[]) => gw('sysctl', '-q', '-w', ...kv);

describe.skipIf(skip)('etd doctor in the lab', () => {
  beforeAll(async () => {
    assertBuilt();
    lab = await createLab();
    recorder = await lab.startRecorder(lab.ns.backend, [
      { address: lab.v4.backends[0], port: 25 },
      { address: lab.v6.backends[0], port: 25 },
    ]);
    file = path.join(dir, 'etd.yaml');
    fs.writeFileSync(
      file,
      `
listeners:
  - { name: smtp4, address: ${lab.v4.gatewayClientSide}, port: 25, mode: vip }
  - { name: smtp6, address: "${lab.v6.gatewayClientSide}", port: 25, mode: vip }
upstream:
  source: clientip
  # The bound of each return-path test: a broken path costs this long (the lab answers in milliseconds).
  connectTimeout: 1s
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
    const applied = await etdCli(['rules', 'apply', '-c', file]);
    expect(applied.code, applied.stdout + applied.stderr).toBe(0);
  }, 60_000);

  afterAll(async () => {
    await lab?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reports all OK on a correct lab, and the return-path test reached the backends from the spoofed client address', async () => {
    const r = await doctor();
    expect(notOk(r)).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.code).toBe(0);
    for (const id of [
      'cap.net_admin',
      'kernel.nft_socket',
      'nft.rule.divert',
      'ip.rule.v4',
      'ip.route.v6',
      'sysctl.rp_filter',
      'sysctl.src_valid_mark',
      'client.v4',
      'return.b4',
      'return.b6',
    ]) {
      expect(find(r, id).status, id).toBe('OK');
    }
    // The derived test clients: unused addresses of the listeners' networks, never the client's own.
    const spoof4 = `10.${lab.x}.1.254`;
    expect(find(r, 'client.v4').detail).toContain(spoof4);
    await recorder.waitFor((e) => (e.event === 'connect' || e.event === 'close') && e.remoteAddress === spoof4, 5000);
    // The text form says the same.
    const text = await etdCli(['doctor', '-c', file]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^OK {4}return\.b4 /m);
    expect(text.stdout).toMatch(/0 FAIL, 0 WARN, \d+ OK — all checks passed/);
  }, 60_000);

  it('a missing ip rule: FAIL with the exact ip rule command; the IPv4 return path fails because of it', async () => {
    await gw('ip', '-4', 'rule', 'del', 'fwmark', '0x1', 'lookup', '100', 'priority', '100');
    try {
      const r = await doctor();
      expect(r.code).toBe(1);
      const rule = find(r, 'ip.rule.v4');
      expect(rule.status).toBe('FAIL');
      expect(rule.fix).toBe('ip -4 rule add fwmark 0x1 lookup 100 priority 100');
      expect(find(r, 'return.b4').status).toBe('FAIL');
      expect(find(r, 'return.b4').detail).toContain('ip.rule.v4');
      expect(find(r, 'return.b6').status).toBe('OK');
      expect(find(r, 'ip.rule.v6').status).toBe('OK');
      const text = await etdCli(['doctor', '-c', file]);
      expect(text.code).toBe(1);
      expect(text.stdout).toMatch(/^FAIL {2}ip\.rule\.v4 /m);
      expect(text.stdout).toContain('fix: ip -4 rule add fwmark 0x1 lookup 100 priority 100');
    } finally {
      await gw('ip', '-4', 'rule', 'add', 'fwmark', '0x1', 'lookup', '100', 'priority', '100');
    }
  }, 60_000);

  it('src_valid_mark=1 (conf/all, then one interface): FAIL, critical, with the sysctl that resets it', async () => {
    await sysctl('net.ipv4.conf.all.src_valid_mark=1');
    try {
      const r = await doctor();
      const f = find(r, 'sysctl.src_valid_mark');
      expect(f.status).toBe('FAIL');
      expect(f.critical).toBe(true);
      expect(f.fix).toBe('sysctl -w net.ipv4.conf.all.src_valid_mark=0');
      expect(find(r, 'return.b4').status).toBe('FAIL');
    } finally {
      await sysctl('net.ipv4.conf.all.src_valid_mark=0');
    }
    await sysctl(`net.ipv4.conf.${lab.ifaces.gatewayToBackend}.src_valid_mark=1`);
    try {
      const r = await doctor();
      const f = find(r, 'sysctl.src_valid_mark');
      expect(f.status).toBe('FAIL');
      expect(f.fix).toBe(`sysctl -w net.ipv4.conf.${lab.ifaces.gatewayToBackend}.src_valid_mark=0`);
      expect(f.detail).toContain(lab.ifaces.gatewayToBackend);
    } finally {
      await sysctl(`net.ipv4.conf.${lab.ifaces.gatewayToBackend}.src_valid_mark=0`);
    }
  }, 60_000);

  it("rp_filter=1 on the gateway's interfaces: FAIL (a warning at start: symmetric paths work), with the sysctl that makes them loose", async () => {
    const { gatewayToBackend: gb, gatewayToClient: gc } = lab.ifaces;
    await sysctl(`net.ipv4.conf.${gb}.rp_filter=1`, `net.ipv4.conf.${gc}.rp_filter=1`);
    try {
      const r = await doctor();
      const f = find(r, 'sysctl.rp_filter');
      expect(f.status).toBe('FAIL');
      expect(f.critical).toBe(false);
      expect(f.fix).toMatch(/^sysctl -w /);
      expect(f.fix).toContain(`net.ipv4.conf.${gb}.rp_filter=2`);
      expect(f.fix).toContain(`net.ipv4.conf.${gc}.rp_filter=2`);
      expect(r.ok).toBe(false);
    } finally {
      await sysctl(`net.ipv4.conf.${gb}.rp_filter=0`, `net.ipv4.conf.${gc}.rp_filter=0`);
    }
    // conf/all=1 makes every interface strict: the fix must lower it too.
    await sysctl('net.ipv4.conf.all.rp_filter=1');
    try {
      const f = find(await doctor(), 'sysctl.rp_filter');
      expect(f.status).toBe('FAIL');
      expect(f.fix).toBe('sysctl -w net.ipv4.conf.all.rp_filter=2');
    } finally {
      await sysctl('net.ipv4.conf.all.rp_filter=0');
    }
  }, 60_000);

  it('a backend whose default route points elsewhere: the return path FAILs with the route through etd as the fix', async () => {
    const be = lab.ns.backend;
    await lab.exec(be, 'ip', ['-4', 'route', 'replace', 'default', 'via', `10.${lab.x}.2.99`]);
    try {
      const r = await doctor();
      const f = find(r, 'return.b4');
      expect(f.status).toBe('FAIL');
      expect(f.fix).toContain(`ip route replace default via ${lab.v4.gatewayBackendSide}`);
      expect(f.fix).toContain(`pbr-linux.sh apply --etd ${lab.v4.gatewayBackendSide}`);
      expect(f.detail).toMatch(/do not come back through etd/);
      expect(find(r, 'return.b6').status).toBe('OK');
      // Nothing local is wrong: only the return path fails.
      expect(notOk(r)).toHaveLength(1);
    } finally {
      await lab.exec(be, 'ip', ['-4', 'route', 'replace', 'default', 'via', lab.v4.gatewayBackendSide]);
    }
    // And with no default route at all (IPv6 this time).
    await lab.exec(be, 'ip', ['-6', 'route', 'del', 'default']);
    try {
      const f = find(await doctor(), 'return.b6');
      expect(f.status).toBe('FAIL');
      expect(f.fix).toContain(`ip -6 route replace default via ${lab.v6.gatewayBackendSide}`);
    } finally {
      await lab.exec(be, 'ip', ['-6', 'route', 'add', 'default', 'via', lab.v6.gatewayBackendSide]);
    }
    expect(notOk(await doctor())).toEqual([]);
  }, 60_000);

  it("--client tests the given address; one of etd's own addresses is refused", async () => {
    const r = await doctor(['--client', `10.${lab.x}.1.77`]);
    expect(find(r, 'client.v4').detail).toContain(`10.${lab.x}.1.77 (given with --client)`);
    expect(find(r, 'return.b4').status).toBe('OK');
    await recorder.waitFor((e) => (e.event === 'connect' || e.event === 'close') && e.remoteAddress === `10.${lab.x}.1.77`, 5000);
    const own = await doctor(['--client', lab.v4.gatewayClientSide]);
    expect(find(own, 'client.v4').status).toBe('FAIL');
    expect(find(own, 'return.b4').status).toBe('WARN');
  }, 60_000);

  it('intercept with forward: original: the untested return path names --probe; --probe tests the named mail servers and breaks like a server', async () => {
    const icfg = path.join(dir, 'intercept.yaml');
    fs.writeFileSync(
      icfg,
      `
listeners:
  - { name: mx, mode: intercept }
upstream: { source: clientip, connectTimeout: 1s, health: { enabled: false } }
api: { enabled: false }
cache: { enabled: false }
state: { path: ":memory:" }
`,
    );
    const [b4, b6] = [lab.v4.backends[0], lab.v6.backends[0]];
    const key4 = `return.probe:${b4}:25`;
    const key6 = `return.probe:[${b6}]:25`;
    const idoctor = async (extra: readonly string[] = []) => {
      const r = await etdCli(['doctor', '-c', icfg, '--json', ...extra]);
      return { ...(JSON.parse(r.stdout) as Report), code: r.code };
    };
    // An intercepting gateway's default route leads toward the clients (the internet): the test client comes from that network.
    await gw('ip', '-4', 'route', 'add', 'default', 'via', lab.v4.client);
    await gw('ip', '-6', 'route', 'add', 'default', 'via', lab.v6.client);
    await etdCli(['rules', 'remove', '-c', file]);
    const applied = await etdCli(['rules', 'apply', '-c', icfg]);
    expect(applied.code, applied.stdout + applied.stderr).toBe(0);
    try {
      const untested = await idoctor();
      expect(find(untested, 'return')).toMatchObject({
        status: 'WARN',
        fix: expect.stringContaining(`etd doctor -c ${icfg} --probe ADDRESS[:PORT]`),
      });
      expect(find(untested, 'return').detail).toContain('forward: original');
      expect(untested.findings.some((f) => f.id.startsWith('return.'))).toBe(false);

      const probed = await idoctor(['--probe', b4, '--probe', `[${b6}]:25`]);
      expect(probed.findings.some((f) => f.id === 'return')).toBe(false);
      expect(find(probed, key4), JSON.stringify(probed.findings.filter((f) => f.status !== 'OK'))).toMatchObject({
        status: 'OK',
        what: expect.stringContaining(`mail server ${b4}:25 (--probe)`),
      });
      expect(find(probed, key4).detail).toMatch(/greeted "220/);
      expect(find(probed, key6).status).toBe('OK');
      await recorder.waitFor((e) => e.event === 'connect' && e.remoteAddress === `10.${lab.x}.1.254`, 5000);

      // Break the named server's return route: the probe fails with the route through etd as the fix.
      await lab.exec(lab.ns.backend, 'ip', ['-4', 'route', 'replace', 'default', 'via', `10.${lab.x}.2.99`]);
      try {
        const broken = await idoctor(['--probe', b4]);
        expect(broken.code).toBe(1);
        expect(find(broken, key4).status).toBe('FAIL');
        expect(find(broken, key4).fix).toMatch(
          new RegExp(`^on ${b4.replaceAll('.', '\\.')}: ip route replace default via ${lab.v4.gatewayBackendSide.replaceAll('.', '\\.')}`),
        );
      } finally {
        await lab.exec(lab.ns.backend, 'ip', ['-4', 'route', 'replace', 'default', 'via', lab.v4.gatewayBackendSide]);
      }

      // A malformed --probe is a usage error naming the value and the forms.
      const bad = await etdCli(['doctor', '-c', icfg, '--probe', 'mx.example.com']);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('ETD_ERR_USAGE');
      expect(bad.stderr).toContain('--probe mx.example.com');
      expect(bad.stderr).toContain('[ADDRESS]:PORT');
    } finally {
      await etdCli(['rules', 'remove', '-c', icfg]);
      await gw('ip', '-4', 'route', 'del', 'default');
      await gw('ip', '-6', 'route', 'del', 'default');
      const back = await etdCli(['rules', 'apply', '-c', file]);
      expect(back.code, back.stdout + back.stderr).toBe(0);
    }
    expect(notOk(await doctor())).toEqual([]);
  }, 90_000);
});
