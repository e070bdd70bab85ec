// DNSBL/DNSWL scoring during the hold, against a real DNS server: Debian's unbound in the lab's
// backend namespace serves the test zones; etd in vip mode in the gateway queries it (IPv4 and IPv6 clients).

import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JsonLineProcess, Lab } from '../../lab/netns.js';
import { inNamespace, type RunningUnbound, startUnbound } from '../../lab/unbound.js';
import { CLI, type LogLine, type RunningEtd } from '../helpers/cli.js';
import { firstBackends, type LabSuite, labSuite, labVipConfig } from '../helpers/labSuite.js';
import { skipPrivileged, skipWithout } from '../helpers/privileged.js';
import { waitFor } from '../helpers/wait.js';

const skip = skipPrivileged('DNSBL scoring against unbound') || skipWithout('unbound', 'unbound', 'DNSBL scoring against unbound');
let suite: LabSuite;
let lab: Lab;
let recorder: JsonLineProcess;
let unbound: RunningUnbound;

/** The lab's client namespace gets more addresses, one per role, in both families. */
const ROLES = { clean: 2, listed: 3, twoLists: 4, allowed: 5, allowedTalker: 6 } as const;
type Role = keyof typeof ROLES;
const addr = (family: 4 | 6, role: Role) => (family === 4 ? `10.${lab.x}.1.${ROLES[role]}` : `fd00:${lab.x}:1::${ROLES[role]}`);
const gw = (family: 4 | 6) => (family === 4 ? lab.v4.gatewayClientSide : lab.v6.gatewayClientSide);

/**
 * A client from `from`: connects, optionally talks at once, waits for the first line, says QUIT;
 * prints how it ended, when the first byte came and what came.
 */
const CLIENT = `
const net = require('net');
const [host, port, localAddress, talk] = process.argv.slice(1);
const t0 = Date.now();
const s = net.connect({ host, port: Number(port), localAddress }, () => { if (talk === '1') s.write('EHLO bot.example\\r\\n'); });
let data = '', first;
s.on('data', (d) => { first ??= Date.now() - t0; data += d; if (/^220 .*\\r\\n/m.test(data) && !data.includes('221')) s.write('QUIT\\r\\n'); });
const done = (how) => { console.log(JSON.stringify({ how, firstMs: first, data })); process.exit(0); };
s.on('error', (e) => done(e.code));
s.on('close', () => done('closed'));
setTimeout(() => done('timeout'), 15000);
`;

async function client(family: 4 | 6, role: Role, talk = false): Promise<{ how: string; firstMs: number | undefined; data: string }> {
  const r = await lab.exec(lab.ns.client, process.execPath, ['-e', CLIENT, gw(family), '25', addr(family, role), talk ? '1' : '0'], {
    timeoutMs: 20_000,
  });
  return JSON.parse(r.stdout.trim()) as { how: string; firstMs: number | undefined; data: string };
}

async function swaksFrom(family: 4 | 6, role: Role): Promise<string> {
  const r = await lab.exec(
    lab.ns.client,
    'swaks',
    [
      '--to',
      'rcpt@example.net',
      '--from',
      'sender@example.org',
      '--server',
      gw(family),
      '--port',
      '25',
      '--local-interface',
      addr(family, role),
      '--timeout',
      '15',
      '--helo',
      'client.example',
    ],
    { timeoutMs: 30_000, allowFailure: true },
  );
  return r.stdout;
}

async function get(p: string): Promise<{ status: number; body: string }> {
  const r = await lab.exec(lab.ns.gateway, process.execPath, [
    '-e',
    "fetch('http://127.0.0.1:8025'+process.argv[1]).then(async r=>console.log(JSON.stringify({status:r.status,body:await r.text()})))",
    p,
  ]);
  return JSON.parse(r.stdout) as { status: number; body: string };
}

async function metrics(): Promise<string> {
  return (await get('/metrics')).body;
}

function metric(text: string, name: string, label: string): number {
  const m = new RegExp(`^${name}\\{${label}\\} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

function configFor(window: string, timeout: string, dnsbl: string): string {
  return suite.writeConfig(
    labVipConfig(lab, {
      window,
      api: '{ enabled: true, address: 127.0.0.1, port: 8025 }',
      extra: `reputation:
  resolvers: [${unbound.address}]
  timeout: ${timeout}
  dnsbl:
${dnsbl}`,
    }),
  );
}

const sessionsOf = (etd: RunningEtd, address: string): LogLine[] =>
  etd.lines.filter((l) => l.msg === 'session' && l.clientAddress === address);
const connectsFrom = (address: string) => recorder.events.filter((e) => e.event === 'connect' && e.remoteAddress === address).length;

describe.skipIf(skip)('DNSBL/DNSWL scoring against a real unbound (IPv4 and IPv6)', () => {
  suite = labSuite({
    name: 'dnsbl',
    recorder: firstBackends,
    leftoverSignal: 'SIGTERM',
  });

  beforeAll(async () => {
    ({ lab, recorder } = suite);
    const extra = Object.values(ROLES).filter((n) => n !== 2);
    await lab.exec(lab.ns.client, 'ip', ['-batch', '-'], {
      input: `${extra.flatMap((n) => [`addr add 10.${lab.x}.1.${n}/24 dev ${lab.ifaces.client}`, `addr add fd00:${lab.x}:1::${n}/64 dev ${lab.ifaces.client} nodad`]).join('\n')}\n`,
    });
    const both = (role: Role, answer: string) => ({ [addr(4, role)]: answer, [addr(6, role)]: answer });
    unbound = await startUnbound(inNamespace(lab, lab.ns.backend), lab.v4.backends[1], [
      { zone: 'bl3.test', listed: { ...both('listed', '127.0.0.2'), '127.0.0.2': '127.0.0.2' } },
      { zone: 'one.test', listed: both('twoLists', '127.0.0.2') },
      { zone: 'two.test', listed: both('twoLists', '127.0.0.10') },
      { zone: 'wl.test', listed: { ...both('allowed', '127.0.10.2'), ...both('allowedTalker', '127.0.10.3') } },
      { zone: 'refused.test', everyName: '127.255.255.254' },
      { zone: 'dead.test', dead: true },
    ]);
  }, 60_000);

  afterAll(async () => {
    // Before the lab's teardown (labSuite's afterAll runs after this one).
    for (const e of suite.running) if (e.child.exitCode === null) e.child.kill('SIGKILL');
    await unbound?.stop();
  });

  it('a listed client is refused unseen by the backend, two weight-1 lists pass, an allowlisted client is connected at once, a refused-query zone counts nothing and warns, an allowlisted early talker is dropped', async () => {
    const file = configFor(
      '3s',
      '1500ms',
      `    - { zone: bl3.test, weight: 3 }
    - { zone: one.test, weight: 1 }
    - { zone: two.test, weight: 1, match: [127.0.0.2-127.0.0.11] }
    - { zone: wl.test, weight: -2, match: ["127.0.[0..255].[1..3]"], name: allowlist }
    - { zone: refused.test, weight: 3 }`,
    );
    const etd = await suite.start(file, 20_000);
    for (const family of [4, 6] as const) {
      const f = `IPv${family}`;
      // Weight 3 ≥ threshold 3: refused with the reply, never connected upstream.
      const listed = await client(family, 'listed');
      expect(listed.data, f).toMatch(
        new RegExp(
          `^554 5\\.7\\.1 Service unavailable; client \\[${addr(family, 'listed').replace(/\./g, '\\.')}\\] blocked using bl3\\.test\\r\\n$`,
        ),
      );
      expect(connectsFrom(addr(family, 'listed')), f).toBe(0);

      // Two weight-1 lists: score 2 < 3, so the window applies and the mail goes through.
      expect(await swaksFrom(family, 'twoLists'), f).toMatch(/<- +250 Queued/);
      await recorder.waitFor((e) => e.event === 'message' && e.remoteAddress === addr(family, 'twoLists'), 5000);

      // On the allowlist (score -2 ≤ -1), first visit: the banner comes far sooner than the 3 s window.
      const allowed = await client(family, 'allowed');
      expect(allowed.data, f).toMatch(/^220 /);
      expect(allowed.firstMs, f).toBeLessThan(1000);

      // The refused.test zone answers 127.255.255.254 for everyone with weight 3: if it counted,
      // this clean client would be refused. It waits the window and is relayed.
      const clean = await client(family, 'clean');
      expect(clean.data, f).toMatch(/^220 /);
      expect(clean.firstMs, f).toBeGreaterThanOrEqual(2800);

      // A returning sender (pass cache) whose answers are cached: connected at once.
      const again = await client(family, 'clean');
      expect(again.data, f).toMatch(/^220 /);
      expect(again.firstMs, f).toBeLessThan(1000);

      // On the allowlist but talking at once: an early talker, dropped, never connected.
      const talker = await client(family, 'allowedTalker', true);
      expect(talker.data, f).toBe('');
      expect(connectsFrom(addr(family, 'allowedTalker')), f).toBe(0);
    }

    await etd.waitFor(() => etd.lines.filter((l) => l.msg === 'session').length >= 12, 10_000);
    for (const family of [4, 6] as const) {
      const [listed] = sessionsOf(etd, addr(family, 'listed'));
      expect(listed).toMatchObject({
        verdict: 'dnsbl',
        cause: 'dnsbl_reject',
        score: 3,
        lists: [{ name: 'bl3.test', answer: '127.0.0.2' }],
      });
      const [two] = sessionsOf(etd, addr(family, 'twoLists'));
      expect(two).toMatchObject({
        verdict: 'passed',
        score: 2,
        lists: [
          { name: 'one.test', answer: '127.0.0.2' },
          { name: 'two.test', answer: '127.0.0.10' },
        ],
      });
      const [allowed] = sessionsOf(etd, addr(family, 'allowed'));
      expect(allowed).toMatchObject({
        verdict: 'passed',
        released: 'dnswl',
        allowlisted: true,
        score: -2,
        lists: [{ name: 'allowlist', answer: '127.0.10.2' }],
      });
      const [clean, again] = sessionsOf(etd, addr(family, 'clean'));
      expect(clean).toMatchObject({ verdict: 'passed' });
      expect(clean).not.toHaveProperty('score');
      expect(again).toMatchObject({ verdict: 'passed', skipped: 'pass_cache' });
      const [talker] = sessionsOf(etd, addr(family, 'allowedTalker'));
      expect(talker).toMatchObject({ verdict: 'early_talker' });
    }
    // The refused query is logged once (per zone per hour) with its cause, and counted.
    const warnings = etd.lines.filter((l) => l.level === 'warn' && /DNSBL zone refused\.test answered 127\.255\.255\.254/.test(l.msg));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.msg).toMatch(/use your own resolver, not a public one/);
    const m = await metrics();
    expect(metric(m, 'etd_dnsbl_refused_answers_total', 'zone="refused.test"')).toBeGreaterThanOrEqual(8);
    expect(metric(m, 'etd_dnsbl_hits_total', 'list="bl3.test"')).toBe(2);
    expect(metric(m, 'etd_dnsbl_hits_total', 'list="allowlist"')).toBeGreaterThanOrEqual(2);
    expect(metric(m, 'etd_dnsbl_queries_total', 'zone="bl3.test"')).toBeGreaterThanOrEqual(8);
    expect(m).toMatch(/^etd_dnsbl_query_seconds_count\{zone="bl3\.test"\} \d+/m);
    expect(m).toMatch(/^etd_connections_total\{listener="smtp4",verdict="dnsbl"\} 1/m);

    // The API: one client's score and each list's answer; /v1/stats counts; a bad address is a 400 with the reason.
    const rep = await get(`/v1/reputation/${addr(6, 'twoLists')}`);
    expect(rep.status).toBe(200);
    const body = JSON.parse(rep.body) as {
      score: number;
      decision: string;
      cached: boolean;
      lists: Array<{ name: string; status: string; answers: string[]; matched: boolean; refused: boolean }>;
    };
    expect(body).toMatchObject({ score: 2, decision: 'window', cached: true });
    expect(body.lists.find((l) => l.name === 'two.test')).toMatchObject({ status: 'answer', answers: ['127.0.0.10'], matched: true });
    expect(body.lists.find((l) => l.name === 'refused.test')).toMatchObject({
      status: 'answer',
      answers: ['127.255.255.254'],
      matched: false,
      refused: true,
    });
    expect(body.lists.find((l) => l.name === 'bl3.test')).toMatchObject({ status: 'none', matched: false });
    const fresh = JSON.parse((await get('/v1/reputation/10.255.0.9')).body) as { score: number; cached: boolean };
    expect(fresh).toMatchObject({ score: 0, cached: false });
    const bad = await get('/v1/reputation/not-an-ip');
    expect(bad.status).toBe(400);
    expect(bad.body).toMatch(/path\.address: \\"not-an-ip\\" is not an IPv4 or IPv6 address/);
    const stats = JSON.parse((await get('/v1/stats')).body) as {
      verdicts: Record<string, number>;
      reputation: { refused: number; allowlisted: number; refusedAnswers: Record<string, number> };
    };
    expect(stats.verdicts.dnsbl).toBe(2);
    expect(stats.reputation.refused).toBe(2);
    expect(stats.reputation.allowlisted).toBeGreaterThanOrEqual(2);
    expect(stats.reputation.refusedAnswers['refused.test']).toBeGreaterThanOrEqual(8);

    // A reload applies new weights to new connections: one.test now weighs 2, so the client on
    // two lists scores 3 and is refused (at accept: its answers are cached).
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('{ zone: one.test, weight: 1 }', '{ zone: one.test, weight: 2 }'));
    const reload = await lab.exec(lab.ns.gateway, process.execPath, [
      '-e',
      "fetch('http://127.0.0.1:8025/v1/reload',{method:'POST'}).then(r=>console.log(r.status))",
    ]);
    expect(reload.stdout.trim()).toBe('200');
    const refusedNow = await client(4, 'twoLists');
    expect(refusedNow.data).toMatch(/^554 5\.7\.1 .*blocked using one\.test\r\n$/);
    await etd.waitFor(() => sessionsOf(etd, addr(4, 'twoLists')).length >= 2, 5000);
    expect(sessionsOf(etd, addr(4, 'twoLists'))[1]).toMatchObject({ verdict: 'dnsbl', score: 3, heldMs: 0 });
  }, 120_000);

  it('a zone that never answers costs no more than the window; a listed client is still refused; the timeout is logged and counted', async () => {
    const etd = await suite.start(
      configFor(
        '1s',
        '3s',
        `    - { zone: bl3.test, weight: 3 }
    - { zone: dead.test, weight: 3 }`,
      ),
      20_000,
    );
    for (const family of [4, 6] as const) {
      const f = `IPv${family}`;
      const clean = await client(family, 'clean');
      expect(clean.data, f).toMatch(/^220 /);
      expect(clean.firstMs, f).toBeGreaterThanOrEqual(900);
      expect(clean.firstMs, f).toBeLessThan(1800);
      // bl3.test answers at once and the dead zone is a blocklist too (it could only add): the
      // score is settled without it, so the refusal comes long before the window ends.
      const listed = await client(family, 'listed');
      expect(listed.data, f).toMatch(/^554 5\.7\.1 .*blocked using bl3\.test\r\n$/);
      expect(listed.firstMs, f).toBeLessThan(600);
      expect(connectsFrom(addr(family, 'listed')), f).toBe(0);
    }
    // Logged as a timeout when the hold ended without its answer (once per zone per minute) …
    // (the clean client's hold ended without dead.test's answer)
    const timeout = await etd.waitFor(
      (l) => l.level === 'warn' && /DNSBL zone dead\.test had not answered by the end of the 1000 ms hold: the lookup counts 0/.test(l.msg),
      8000,
    );
    expect(timeout.zone).toBe('dead.test');
    // … and counted when the query itself times out (reputation.timeout 3 s).
    const timeouts = await waitFor(async () => metric(await metrics(), 'etd_dnsbl_timeouts_total', 'zone="dead.test"') || undefined, {
      timeout: 8000,
      interval: 250,
      what: 'etd_dnsbl_timeouts_total{zone="dead.test"} to count',
    });
    expect(timeouts).toBeGreaterThanOrEqual(1);
    // A second visit of the listed client: its answer is cached, so it is refused at accept.
    const again = await client(4, 'listed');
    expect(again.data).toMatch(/^554 /);
    await etd.waitFor(() => sessionsOf(etd, addr(4, 'listed')).length >= 2, 5000);
    expect(sessionsOf(etd, addr(4, 'listed'))[1]).toMatchObject({ verdict: 'dnsbl', heldMs: 0, score: 3 });
  }, 90_000);

  it('etd doctor queries each zone for the test entry 127.0.0.2 and flags a refused query with its fix', async () => {
    const file = configFor(
      '3s',
      '1s',
      `    - { zone: bl3.test, weight: 3 }
    - { zone: one.test, weight: 1 }
    - { zone: refused.test, weight: 3 }
    - { zone: dead.test, weight: 3 }`,
    );
    const r = await lab.exec(lab.ns.gateway, process.execPath, [CLI, 'doctor', '-c', file, '--json'], {
      allowFailure: true,
      timeoutMs: 30_000,
    });
    const report = JSON.parse(r.stdout) as { findings: Array<{ id: string; status: string; detail: string; fix?: string }> };
    const find = (id: string) => report.findings.find((f) => f.id === id);
    expect(find('dnsbl.bl3.test')).toMatchObject({ status: 'OK', detail: expect.stringMatching(/answered 127\.0\.0\.2 through /) });
    expect(find('dnsbl.one.test')).toMatchObject({
      status: 'WARN',
      detail: expect.stringMatching(/2\.0\.0\.127\.one\.test does not exist/),
    });
    expect(find('dnsbl.refused.test')).toMatchObject({
      status: 'FAIL',
      detail: expect.stringMatching(/answered 127\.255\.255\.254: the list refused the query/),
      fix: expect.stringMatching(/use your own resolver, not a public one/),
    });
    expect(find('dnsbl.dead.test')).toMatchObject({
      status: 'FAIL',
      detail: expect.stringMatching(/no answer for 2\.0\.0\.127\.dead\.test/),
    });
  }, 60_000);
});
