// Privileged: apply / verify / remove etd's nft table and policy routing inside a throwaway network namespace.
//
// The netfilter code runs in a child process (test/netns/netfilter-child.ts via runTsInNetns),
// because libnftables and iproute2 act on the namespace of the calling process. The namespace has
// no interfaces but lo and carries no traffic; it is deleted in afterAll whatever happens.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { netfilterConfig } from '../helpers/netfilterConfig.js';
import { skipPrivileged } from '../helpers/privileged.js';
import { runTsInNetns } from '../helpers/runInNetns.js';

const config = netfilterConfig;

const INTERCEPT = config([{ mode: 'intercept' }]);
const VIP = config([{ mode: 'vip' }]);
const MIXED = config([{ name: 'mx', mode: 'intercept', destinations: ['10.0.0.0/8', '11.0.0.0/8', '192.0.2.7', '2001:db8::/32'] }]);

const ns = `etdnf${process.pid}${randomBytes(3).toString('hex')}`;
let nsCreated = false;

/** A command run with a bounded wait; returns stdout (throws on failure). */
function sh(cmd: string, args: readonly string[]): string {
  return execFileSync(cmd, [...args], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
}
const inNs = (cmd: string, ...args: string[]) => sh('ip', ['netns', 'exec', ns, cmd, ...args]);

interface ChildOk {
  ok: true;
  result: unknown;
  logs: { level: string; msg: string }[];
}
interface ChildErr {
  ok: false;
  code: string;
  message: string;
  hint: string | null;
}

async function child(op: string, req: object, wrap?: readonly string[]): Promise<ChildOk | ChildErr> {
  const r = await runTsInNetns(ns, 'test/netns/netfilter-child.ts', [op], {
    input: JSON.stringify(req),
    timeoutMs: 30_000,
    ...(wrap ? { wrap } : {}),
  });
  if (r.code !== 0 || r.timedOut) throw new Error(`child ${op} failed (code ${r.code}, timedOut ${r.timedOut}):\n${r.stderr}\n${r.stdout}`);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as ChildOk | ChildErr;
}

async function ok(op: string, req: object): Promise<unknown> {
  const r = await child(op, req);
  if (!r.ok) throw new Error(`child ${op}: ${r.code}: ${r.message}`);
  return r.result;
}

interface State {
  ok: boolean;
  clean: boolean;
  items: { id: string; status: string; present: boolean }[];
}
const verify = async (c: Config) => (await ok('verify', { config: c })) as State;

const count = (text: string, re: RegExp) => text.split('\n').filter((l) => re.test(l)).length;
const etdRules = (family: 4 | 6) => count(inNs('ip', `-${family}`, 'rule', 'show'), /fwmark 0x1 lookup 100\b/);
const localRoutes = (family: 4 | 6) =>
  count(inNs('ip', `-${family}`, 'route', 'show', 'table', 'all'), /^local (default|::\/0|0\.0\.0\.0\/0) dev lo table 100\b/);

describe.skipIf(skipPrivileged('netfilter'))('netfilter apply/verify/remove (netns)', () => {
  beforeAll(() => {
    sh('ip', ['netns', 'add', ns]);
    nsCreated = true;
    inNs('ip', 'link', 'set', 'lo', 'up');
    // Someone else's state that etd must never touch.
    inNs(
      'nft',
      'add table inet other\nadd chain inet other c { type filter hook prerouting priority 0; policy accept; }\nadd rule inet other c tcp dport 2525 counter accept',
    );
    inNs('ip', '-4', 'rule', 'add', 'fwmark', '0x2', 'lookup', '200', 'priority', '150');
    inNs('ip', '-6', 'rule', 'add', 'fwmark', '0x2', 'lookup', '200', 'priority', '150');
    inNs('ip', '-4', 'rule', 'add', 'from', '10.99.0.0/16', 'lookup', '100', 'priority', '300'); // same table, not etd's
    inNs('ip', '-4', 'route', 'add', '10.98.0.0/16', 'dev', 'lo', 'table', '100'); // same table, not etd's
  });

  afterAll(() => {
    if (nsCreated) sh('ip', ['netns', 'del', ns]);
  });

  const foreignIntact = () => {
    expect(inNs('nft', 'list', 'table', 'inet', 'other')).toMatch(/tcp dport 2525 counter packets \d+ bytes \d+ accept/);
    expect(inNs('ip', '-4', 'rule', 'show')).toMatch(/150:\s+from all fwmark 0x2 lookup 200/);
    expect(inNs('ip', '-6', 'rule', 'show')).toMatch(/150:\s+from all fwmark 0x2 lookup 200/);
    expect(inNs('ip', '-4', 'rule', 'show')).toMatch(/300:\s+from 10\.99\.0\.0\/16 lookup 100/);
    expect(inNs('ip', '-4', 'route', 'show', 'table', '100')).toMatch(/10\.98\.0\.0\/16 dev lo/);
  };

  it('before apply, verify reports everything missing', async () => {
    const s = await verify(INTERCEPT);
    expect(s.clean).toBe(true);
    expect(s.ok).toBe(false);
    expect(s.items.map((i) => i.id)).toEqual([
      'nft.table',
      'nft.chain.divert',
      'nft.chain.intercept',
      'nft.rule.divert',
      'nft.rule.intercept.local',
      'nft.rule.intercept.l0.v4',
      'nft.rule.intercept.l0.v6',
      'ip.rule.v4',
      'ip.route.v4',
      'ip.rule.v6',
      'ip.route.v6',
    ]);
    expect(s.items.every((i) => i.status === 'missing')).toBe(true);
  });

  it('apply installs the table (TPROXY rules accepted by the kernel), the fwmark rules and the local routes', async () => {
    await ok('apply', { config: INTERCEPT });
    const table = inNs('nft', 'list', 'table', 'inet', 'etd');
    expect(table).toContain('meta l4proto tcp socket transparent 1 meta mark set 0x00000001 accept');
    expect(table).toContain('type filter hook prerouting priority mangle + 1; policy accept;');
    expect(table).toContain('fib daddr type local return');
    expect(table).toContain('tcp dport 25 tproxy ip to 127.0.0.1:10025 meta mark set 0x00000001 accept');
    expect(table).toContain('tcp dport 25 tproxy ip6 to [::1]:10025 meta mark set 0x00000001 accept');
    expect(inNs('ip', '-4', 'rule', 'show')).toMatch(/100:\s+from all fwmark 0x1 lookup 100/);
    expect(inNs('ip', '-6', 'rule', 'show')).toMatch(/100:\s+from all fwmark 0x1 lookup 100/);
    expect(inNs('ip', '-4', 'route', 'show', 'table', '100')).toMatch(/^local default dev lo/m);
    expect(inNs('ip', '-6', 'route', 'show', 'table', '100')).toMatch(/^local default dev lo/m);
    const s = await verify(INTERCEPT);
    expect(s.items.filter((i) => i.status !== 'ok')).toEqual([]);
    expect(s.ok).toBe(true);
    foreignIntact();
  });

  it('a second apply leaves exactly one copy of each rule, ip rule and route', async () => {
    await ok('apply', { config: INTERCEPT });
    const table = inNs('nft', 'list', 'table', 'inet', 'etd');
    expect(count(table, /socket transparent 1/)).toBe(1);
    expect(count(table, /tproxy ip to/)).toBe(1);
    expect(count(table, /tproxy ip6 to/)).toBe(1);
    expect(count(inNs('nft', 'list', 'tables'), /^table inet etd$/)).toBe(1);
    expect([etdRules(4), etdRules(6), localRoutes(4), localRoutes(6)]).toEqual([1, 1, 1, 1]);
    expect((await verify(INTERCEPT)).ok).toBe(true);
    foreignIntact();
  });

  it('apply after a crash replaces stale state: extra rules, stale chains, a missing ip rule', async () => {
    // What a crashed or older etd (or a hand edit) may leave behind.
    inNs('nft', 'add rule inet etd divert meta l4proto tcp socket transparent 1 meta mark set 0x1 accept');
    inNs('nft', 'add chain inet etd old { type filter hook prerouting priority -300; policy accept; }');
    inNs('ip', '-6', 'rule', 'del', 'fwmark', '0x1', 'lookup', '100', 'priority', '100');
    const before = await verify(INTERCEPT);
    const status = Object.fromEntries(before.items.map((i) => [i.id, i.status]));
    expect(status).toMatchObject({
      'nft.rule.divert': 'duplicate',
      'nft.chain.old': 'unexpected',
      'ip.rule.v6': 'missing',
      'ip.rule.v4': 'ok',
    });

    const r = (await ok('apply', { config: INTERCEPT })) as { droppedChains: string[] };
    expect(r.droppedChains).toEqual(['old']);
    const table = inNs('nft', 'list', 'table', 'inet', 'etd');
    expect(count(table, /socket transparent 1/)).toBe(1);
    expect(table).not.toContain('chain old');
    expect([etdRules(4), etdRules(6), localRoutes(4), localRoutes(6)]).toEqual([1, 1, 1, 1]);
    expect((await verify(INTERCEPT)).ok).toBe(true);
  });

  it('switching to a vip config removes the intercept chain in the same transaction', async () => {
    await ok('apply', { config: VIP });
    const table = inNs('nft', 'list', 'table', 'inet', 'etd');
    expect(table).toContain('chain divert');
    expect(table).not.toContain('chain intercept');
    expect((await verify(VIP)).ok).toBe(true);
    foreignIntact();
  });

  it('intercept with mixed destinations: the kernel accepts the sets and verify recognises them after nft merges prefixes', async () => {
    await ok('apply', { config: MIXED });
    const table = inNs('nft', 'list', 'table', 'inet', 'etd');
    expect(table).toMatch(/tcp dport 25 ip daddr \{ 10\.0\.0\.0\/7, 192\.0\.2\.7 \} tproxy ip to 127\.0\.0\.1:10025/);
    expect(table).toMatch(/tcp dport 25 ip6 daddr 2001:db8::\/32 tproxy ip6 to \[::1\]:10025/);
    const s = await verify(MIXED);
    expect(s.items.filter((i) => i.status !== 'ok')).toEqual([]);
    // The same live state read against another destination list is not "ok".
    const other = config([{ name: 'mx', mode: 'intercept', destinations: ['10.0.0.0/8', '192.0.2.7', '2001:db8::/32'] }]);
    expect((await verify(other)).items.find((i) => i.id === 'nft.rule.intercept.mx.v4')?.status).toBe('missing');
  });

  it('remove deletes everything of etd and nothing else; a second remove is a no-op', async () => {
    await ok('remove', { config: MIXED });
    expect(inNs('nft', 'list', 'ruleset')).not.toMatch(/table inet etd\b/);
    expect([etdRules(4), etdRules(6), localRoutes(4), localRoutes(6)]).toEqual([0, 0, 0, 0]);
    expect(inNs('ip', '-4', 'rule', 'show')).not.toMatch(/fwmark 0x1 lookup 100/);
    expect(inNs('ip', '-6', 'rule', 'show')).not.toMatch(/fwmark 0x1 lookup 100/);
    foreignIntact();
    const s = await verify(MIXED);
    expect(s.clean).toBe(true);
    await ok('remove', { config: MIXED });
    foreignIntact();
  });

  it("a bad batch gives ETD_ERR_NFT with libnftables' text and the offending line", async () => {
    const r = await child('run', {
      batch: 'add table inet etdbad\nadd chain inet etdbad c\nadd rule inet etdbad c tcp dport 25 frobnicate accept\n',
    });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.code).toBe('ETD_ERR_NFT');
    expect(r.message).toContain('Error: syntax error');
    expect(r.message).toContain('batch line 3: add rule inet etdbad c tcp dport 25 frobnicate accept');
    // Atomic: the first two lines were not applied either.
    expect(inNs('nft', 'list', 'tables')).not.toContain('etdbad');

    const missing = await child('run', { batch: 'add table inet etdbad\nadd rule inet etdbad nochain accept\n' });
    expect(missing.ok).toBe(false);
    if (missing.ok) return;
    expect(missing.message).toContain('No such file or directory');
    expect(missing.message).toContain('batch line 2: add rule inet etdbad nochain accept');
  });

  it('etd rules show | apply | remove', async () => {
    const show = (await ok('rules', { config: INTERCEPT, sub: 'show' })) as { code: number; lines: string[] };
    expect(show.code).toBe(0);
    expect(show.lines).toContain('add rule inet etd divert meta l4proto tcp socket transparent 1 meta mark set 0x1 accept');
    expect(show.lines).toContain('ip -4 rule add fwmark 0x1 lookup 100 priority 100');
    expect(show.lines).toContain('# nothing of etd is installed');

    const apply = (await ok('rules', { config: INTERCEPT, sub: 'apply' })) as { code: number; lines: string[] };
    expect(apply.code).toBe(0);
    const after = (await ok('rules', { config: INTERCEPT, sub: 'show' })) as { code: number; lines: string[] };
    expect(after.lines).toContain('# all present');
    expect(after.lines.join('\n')).toContain('meta l4proto tcp socket transparent 1 meta mark set 0x00000001 accept');

    const remove = (await ok('rules', { config: INTERCEPT, sub: 'remove' })) as { code: number; lines: string[] };
    expect(remove.code).toBe(0);
    expect(inNs('nft', 'list', 'ruleset')).not.toMatch(/table inet etd\b/);
    foreignIntact();
  });

  it('without CAP_NET_ADMIN: ETD_ERR_NFT with the privilege hint; `rules show` still prints the plan', async () => {
    // Still uid 0 (so the repo stays readable wherever CI checked it out), but with no capabilities at all.
    const noCaps = ['setpriv', '--bounding-set=-all', '--inh-caps=-all'];
    const r = await child('run', { batch: 'add table inet etdnope\n' }, noCaps);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.code).toBe('ETD_ERR_NFT');
    expect(r.message).toContain('Operation not permitted');
    expect(r.hint).toContain('CAP_NET_ADMIN');
    const show = (await child('rules', { config: INTERCEPT, sub: 'show' }, noCaps)) as ChildOk;
    const out = show.result as { code: number; lines: string[] };
    expect(out.code).toBe(0);
    expect(out.lines).toContain('add table inet etd');
    expect(out.lines.some((l) => /unavailable: .*Operation not permitted/.test(l))).toBe(true);
  });
});
