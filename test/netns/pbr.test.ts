// Deployment picture 2 end to end: the backends' default route points at a router, not etd; the router applies
// scripts/pbr-linux.sh (ip rule sport 25, then the nftables-mark variant), then FRRouting's pbrd (Debian's frr, zebra + pbrd
// started here), and sessions relay with the client's IP preserved. Also: what FRR 8.4 really installs for a src-port match.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FrrRouter, frrInstalled, startFrr } from '../../lab/frr.js';
import type { JsonLineProcess } from '../../lab/netns.js';
import { createPbrLab, type PbrLab } from '../../lab/pbrLab.js';
import type { Finding } from '../../src/doctor/checks.js';
import { CLI, type RunningEtd, runEtd } from '../helpers/cli.js';
import { vipConfig } from '../helpers/labSuite.js';
import { inCI, skipPrivileged } from '../helpers/privileged.js';
import { sleep, waitFor } from '../helpers/wait.js';

const skip = skipPrivileged('PBR router lab');
const skipFrr = skip || !frrInstalled();
if (!skip && skipFrr) {
  if (inCI)
    throw new Error('PBR lab with FRRouting: cannot run in CI: frr is not installed (Debian: apt-get install frr). CI must install it.');
  console.warn('SKIPPED PBR lab with FRRouting: frr is not installed (Debian: apt-get install frr)');
}
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
    '--etd',
    lab.v4.etd,
    '--etd',
    lab.v6.etd,
    '--from',
    lab.v4.backendNet,
    '--from',
    lab.v6.backendNet,
    '--iif',
    lab.ifaces.routerToBackend,
    ...extra,
  ];
  const r = await lab.exec(lab.ns.router, 'bash', args, { timeoutMs: 20_000 });
  return r.stdout + r.stderr;
}

async function routerRules(): Promise<{ v4: string; v6: string }> {
  const [v4, v6] = await Promise.all([
    lab.exec(lab.ns.router, 'ip', ['-4', 'rule', 'show']),
    lab.exec(lab.ns.router, 'ip', ['-6', 'rule', 'show']),
  ]);
  return { v4: v4.stdout, v6: v6.stdout };
}

/** A swaks session from the client namespace to `server`:25. */
async function swaks(server: string): Promise<string> {
  const r = await lab.exec(
    lab.ns.client,
    'swaks',
    [
      '--to',
      'rcpt@example.net',
      '--from',
      'sender@example.org',
      '--server',
      server,
      '--port',
      '25',
      '--timeout',
      '15',
      '--helo',
      'client.example',
    ],
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
  const r = await lab.exec(lab.ns.etd, process.execPath, [CLI, 'doctor', '-c', file, '--json', ...extra], {
    allowFailure: true,
    timeoutMs: 30_000,
  });
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
    await recorder.waitFor(
      (e) =>
        e.event === 'message' &&
        e.remoteAddress === client &&
        recorder.events.filter((x) => x.event === 'message' && x.remoteAddress === client).length > before,
      5000,
    );

    const connects = connectsFrom(client);
    const early = await earlyTalker(server);
    expect(early.data, `${label} ${family}`).toBe('');
    await sleep(800); // past the window
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
      vipConfig({
        listeners: { smtp4: lab.v4.etd, smtp6: lab.v6.etd },
        servers: { b4: lab.v4.backends[0], b6: lab.v6.backends[0] },
        // Short: the doctor cases here time out on purpose (no PBR yet), each costing this long.
        connectTimeout: '1s',
        // Every session must meet the window (no pass/deny cache), and nothing is written outside the lab.
        extra: 'cache: { enabled: false }',
      }),
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

  it("the backends' default route points at the router, and without PBR their replies bypass etd; the doctor names the router-side fixes, not a default route on the backend", async () => {
    const route = await lab.exec(lab.ns.backend, 'ip', ['-4', 'route', 'show', 'default']);
    expect(route.stdout).toContain(`via ${lab.v4.routerBackendSide}`);
    expect(route.stdout).not.toContain(lab.v4.etd);
    const findings = await doctor();
    expect(statusOf(findings, 'return.b4')).toBe('FAIL');
    expect(statusOf(findings, 'return.b6')).toBe('FAIL');
    for (const [id, etdAddr, backend, router] of [
      ['return.b4', lab.v4.etd, `${lab.v4.backends[0]}/32`, lab.v4.routerEtdSide],
      ['return.b6', lab.v6.etd, `${lab.v6.backends[0]}/128`, lab.v6.routerEtdSide],
    ] as const) {
      const f = findings.find((x) => x.id === id)!;
      expect(f.detail).toContain(`through the router ${router}`);
      // A default route via etd cannot work on a backend that is not on etd's subnet.
      expect(f.fix).not.toContain('route replace default');
      expect(f.fix).toContain(`pbr-linux.sh apply --etd ${etdAddr} --from ${backend}`);
      expect(f.fix).toContain('--mark 0x25');
      expect(f.fix).toContain(`FRRouting: pbr-map etd seq 10, match src-ip ${backend}, match mark 37 (0x25`);
    }
    // The same for a mail server named with --probe.
    const probed = await doctor(['--probe', lab.v4.backends[1]]);
    const p = probed.find((x) => x.id === `return.probe:${lab.v4.backends[1]}:25`)!;
    expect(p.status).toBe('FAIL');
    expect(p.fix).toMatch(new RegExp(`^not on ${lab.v4.backends[1].replaceAll('.', '\\.')} `));
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
    expect((await lab.exec(lab.ns.router, 'nft', ['list', 'table', 'inet', 'etd_pbr'])).stdout).toMatch(
      /tcp sport 25 meta mark set 0x00000025/,
    );

    await expectRelayed('nft mark');

    await pbr('remove', ['--mark', '0x25']);
    expect(await routerRules()).toEqual(before);
    expect((await lab.exec(lab.ns.router, 'nft', ['list', 'ruleset'])).stdout).toBe(nftBefore);
  }, 120_000);

  describe.skipIf(skipFrr)('FRRouting pbrd on the router (Debian frr: zebra + pbrd started here)', () => {
    // FRR 8.4 installs no port match in the kernel (see the last test): the backends' port-25 replies
    // are marked by nftables and the pbr-map matches the mark (docs/routing.md, FRRouting).
    const MARK = 0x25;
    const nftTable = 'etd_frr';
    let frr: FrrRouter | undefined;
    const pbrdConfig = (): string => `
pbr-map etd seq 10
 match src-ip ${lab.v4.backendNet}
 match mark ${MARK}
 set nexthop ${lab.v4.etd}
exit
pbr-map etd seq 20
 match src-ip ${lab.v6.backendNet}
 match mark ${MARK}
 set nexthop ${lab.v6.etd}
exit
interface ${lab.ifaces.routerToBackend}
 pbr-policy etd
exit
`;
    const markRules = (): string => `
table inet ${nftTable} {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    iifname "${lab.ifaces.routerToBackend}" ip saddr ${lab.v4.backendNet} tcp sport 25 meta mark set ${MARK}
    iifname "${lab.ifaces.routerToBackend}" ip6 saddr ${lab.v6.backendNet} tcp sport 25 meta mark set ${MARK}
  }
}
`;
    /** FRR's kernel rules (proto zebra), polled until `want` holds (bounded: 10 s). */
    async function zebraRules(want: (r: { v4: string[]; v6: string[] }) => boolean): Promise<{ v4: string[]; v6: string[] }> {
      let r = { v4: [] as string[], v6: [] as string[] };
      const read = async () => {
        const all = await routerRules();
        r = { v4: all.v4.split('\n').filter((l) => /proto zebra/.test(l)), v6: all.v6.split('\n').filter((l) => /proto zebra/.test(l)) };
        return want(r);
      };
      // On a timeout the last rules are returned: the caller's assertion shows them.
      await waitFor(read, { timeout: 10_000, interval: 200, what: "FRR's rules" }).catch(() => undefined);
      return r;
    }
    let rulesBefore: { v4: string; v6: string };
    let nftBefore: string;

    beforeAll(async () => {
      rulesBefore = await routerRules();
      nftBefore = (await lab.exec(lab.ns.router, 'nft', ['list', 'ruleset'])).stdout;
      await lab.exec(lab.ns.router, 'nft', ['-f', '-'], { input: markRules() });
      frr = await startFrr(lab, lab.ns.router, pbrdConfig());
    }, 60_000);

    afterAll(async () => {
      await frr?.stop();
      await lab.exec(lab.ns.router, 'nft', ['delete', 'table', 'inet', nftTable], { allowFailure: true });
    });

    it("pbr-map with match mark: the kernel rules are FRR's (proto zebra, fwmark, iif), sessions relay with the client IP, the doctor passes", async () => {
      const rules = await zebraRules((r) => r.v4.length >= 1 && r.v6.length >= 1);
      const iif = lab.ifaces.routerToBackend;
      expect(rules.v4, frr!.logs()).toEqual([
        expect.stringMatching(new RegExp(`^\\d+:\\s+from ${lab.v4.backendNet} fwmark 0x25 iif ${iif} lookup \\d+ proto zebra\\s*$`)),
      ]);
      expect(rules.v6, frr!.logs()).toEqual([
        expect.stringMatching(
          new RegExp(`^\\d+:\\s+from ${lab.v6.backendNet.replace('/', '\\/')} fwmark 0x25 iif ${iif} lookup \\d+ proto zebra\\s*$`),
        ),
      ]);
      // The route behind each rule is FRR's too, to etd.
      const table = /lookup (\d+)/.exec(rules.v4[0]!)![1]!;
      expect((await lab.exec(lab.ns.router, 'ip', ['-4', 'route', 'show', 'table', table])).stdout).toMatch(
        new RegExp(`^default .*via ${lab.v4.etd.replaceAll('.', '\\.')} .*proto pbr`, 'm'),
      );
      const map = await frr!.vtysh('show pbr map etd');
      expect(map).toMatch(/pbr-map etd valid: yes/);
      expect(map.match(/Installed: yes Reason: Valid/g)).toHaveLength(2);

      await expectRelayed('FRR pbr-map');
      const findings = await doctor();
      expect(findings.filter((f) => f.status !== 'OK').map((f) => `${f.id}: ${f.detail}`)).toEqual([]);
      expect(statusOf(await doctor(['--client', `10.${lab.x}.1.254`]), 'return.b4')).toBe('OK');
    }, 120_000);

    it('what the kernel gets per match: src-port/dst-port are dropped while `show pbr map` says installed (the trap); dscp only within the TOS bits', async () => {
      // Hosts and networks that do not exist, so these rules divert nothing real.
      const x = lab.x;
      const cases = [
        {
          seq: 30,
          matches: [`match src-ip 10.${x}.2.99/32`, 'match ip-protocol tcp', 'match src-port 25'],
          key: `from 10.${x}.2.99 `,
          kernel: new RegExp(`from 10\\.${x}\\.2\\.99 iif ${lab.ifaces.routerToBackend} ipproto tcp lookup \\d+ proto zebra`),
          shown: /SRC Port Match: 25/,
        },
        {
          seq: 40,
          matches: [`match dst-ip 10.${x}.99.0/24`, 'match dst-port 25'],
          key: `to 10.${x}.99.0/24 `,
          kernel: new RegExp(`from all to 10\\.${x}\\.99\\.0/24 iif ${lab.ifaces.routerToBackend} lookup \\d+ proto zebra`),
          shown: /DST Port Match: 25/,
        },
        {
          seq: 50,
          matches: [`match src-ip 10.${x}.2.98/32`, 'match dscp 4'],
          key: `from 10.${x}.2.98 `,
          kernel: new RegExp(`from 10\\.${x}\\.2\\.98 tos 0x10 iif ${lab.ifaces.routerToBackend} lookup \\d+ proto zebra`),
          shown: /DSCP Match: 4/,
        },
      ];
      try {
        for (const c of cases)
          await frr!.vtysh('configure terminal', `pbr-map etd seq ${c.seq}`, ...c.matches, `set nexthop ${lab.v4.etd}`);
        await frr!.vtysh(
          'configure terminal',
          'pbr-map etd seq 60',
          `match src-ip 10.${x}.2.97/32`,
          'match dscp 10',
          `set nexthop ${lab.v4.etd}`,
        );
        const rules = await zebraRules((r) => cases.every((c) => r.v4.some((l) => l.includes(c.key))));
        const map = await frr!.vtysh('show pbr map etd');
        for (const c of cases) {
          const rule = rules.v4.find((l) => l.includes(c.key));
          expect(rule, `seq ${c.seq}: ${frr!.logs()}`).toMatch(c.kernel);
          expect(rule).not.toMatch(/sport|dport/);
          const seq = map.slice(map.indexOf(`Seq: ${c.seq} `), map.indexOf(`Seq: ${c.seq + 10} `));
          expect(seq).toMatch(c.shown);
          expect(seq).toMatch(/Installed: yes Reason: Valid/);
        }
        // dscp 10 (tos 0x28) is outside the kernel's TOS bits: no kernel rule, though the reason says "Valid".
        expect(rules.v4.some((l) => l.includes(`from 10.${x}.2.97 `))).toBe(false);
        expect(map.slice(map.indexOf('Seq: 60 '))).toMatch(/Installed: no Reason: Valid/);
      } finally {
        for (const seq of [30, 40, 50, 60]) await frr!.vtysh('configure terminal', `no pbr-map etd seq ${seq}`);
      }
      expect((await zebraRules((r) => r.v4.length === 1)).v4).toHaveLength(1);
    }, 60_000);

    it('stopping zebra and pbrd removes their rules; the router is as before', async () => {
      await frr!.stop();
      const after = await zebraRules((r) => r.v4.length === 0 && r.v6.length === 0);
      expect(after).toEqual({ v4: [], v6: [] });
      await lab.exec(lab.ns.router, 'nft', ['delete', 'table', 'inet', nftTable]);
      expect(await routerRules()).toEqual(rulesBefore);
      expect((await lab.exec(lab.ns.router, 'nft', ['list', 'ruleset'])).stdout).toBe(nftBefore);
    }, 60_000);
  });
});
