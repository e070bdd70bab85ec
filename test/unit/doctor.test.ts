// Unit tests for src/doctor/checks.ts (facts → findings, test-client choice, return-path plan) and the doctor's table format.

import { describe, expect, it } from 'vitest';
import { formatFindings } from '../../src/commands/doctor.js';
import { validateConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import {
  chooseTestClient,
  criticalFailures,
  type DoctorFacts,
  effectiveRpFilter,
  effectiveSrcValidMark,
  evaluate,
  type Finding,
  familiesInUse,
  type IfAddr,
  neededFeatures,
  type ProbeOutcome,
  parseCapEff,
  planReturnPath,
  type ReturnProbe,
  spareAddress,
  summarize,
  sysctlKey,
} from '../../src/doctor/checks.js';
import { parseProbe } from '../../src/doctor/targets.js';
import type { CheckItem, NetfilterState } from '../../src/netfilter/setup.js';

// ---- fixtures: the netns lab's gateway, as the doctor sees it when everything is right --------

const VIP_DOC = {
  listeners: [
    { name: 'smtp4', address: '10.9.1.1', port: 25, mode: 'vip' },
    { name: 'smtp6', address: 'fd00:9:1::1', port: 25, mode: 'vip' },
  ],
  upstream: {
    source: 'clientip',
    servers: [
      { name: 'b4', address: '10.9.2.10' },
      { name: 'b6', address: 'fd00:9:2::10' },
    ],
  },
};
const cfg = (doc: object = VIP_DOC): Config => validateConfig(doc);
const VIP = cfg();
const INTERCEPT = cfg({ listeners: [{ name: 'mx', mode: 'intercept' }], upstream: { source: 'clientip' } });
const PLAIN = cfg({
  listeners: [{ name: 'p', address: '127.0.0.1', port: 2525 }],
  upstream: { servers: [{ name: 's', address: '127.0.0.1' }] },
});

const ALL_CAPS = (1n << 41n) - 1n;
const without = (...bits: number[]) => bits.reduce((m, b) => m & ~(1n << BigInt(b)), ALL_CAPS);

const ADDRS: IfAddr[] = [
  { ifname: 'lo', family: 4, local: '127.0.0.1', prefixlen: 8, scope: 'host' },
  { ifname: 'veth-gc', family: 4, local: '10.9.1.1', prefixlen: 24, scope: 'global' },
  { ifname: 'veth-gb', family: 4, local: '10.9.2.1', prefixlen: 24, scope: 'global' },
  { ifname: 'veth-gc', family: 6, local: 'fd00:9:1::1', prefixlen: 64, scope: 'global' },
  { ifname: 'veth-gb', family: 6, local: 'fd00:9:2::1', prefixlen: 64, scope: 'global' },
  { ifname: 'veth-gc', family: 6, local: 'fe80::1', prefixlen: 64, scope: 'link' },
];

const ruleIds = ['nft.table', 'nft.chain.divert', 'nft.rule.divert', 'ip.rule.v4', 'ip.route.v4', 'ip.rule.v6', 'ip.route.v6'];
function netfilterState(overrides: Record<string, CheckItem['status']> = {}): NetfilterState {
  const items: CheckItem[] = ruleIds.map((id) => {
    const status = overrides[id] ?? 'ok';
    return { id, what: `what ${id}`, status, present: status !== 'missing' && status !== 'unsupported' };
  });
  return { ok: items.every((i) => i.status === 'ok'), clean: items.every((i) => !i.present), items };
}

function facts(over: Partial<DoctorFacts> = {}): DoctorFacts {
  return {
    config: VIP,
    configFile: '/etc/etd/etd.yaml',
    capabilities: { effective: ALL_CAPS },
    addon: { path: '/opt/etd/native/build/Release/etd_transparent.node' },
    kernel: { probes: [{ feature: 'socket', ok: true }] },
    netfilter: netfilterState(),
    sysctls: {
      ipForward: 1,
      ipv6Forwarding: 1,
      unprivilegedPortStart: 1024,
      rpFilter: { all: 0, default: 0 },
      srcValidMark: { all: 0, default: 0 },
    },
    interfaces: [
      { name: 'veth-gb', why: ['route to server b4'], rpFilter: 0, srcValidMark: 0 },
      { name: 'veth-gc', why: ['listener smtp4'], rpFilter: 0, srcValidMark: 0 },
    ],
    routes: [
      { server: 'b4', address: '10.9.2.10', port: 25, family: 4, dev: 'veth-gb', prefsrc: '10.9.2.1' },
      { server: 'b6', address: 'fd00:9:2::10', port: 25, family: 6, dev: 'veth-gb', prefsrc: 'fd00:9:2::1' },
    ],
    testClients: [
      { family: 4, address: '10.9.1.254', how: '10.9.1.254, an unused address', explicit: false },
      { family: 6, address: 'fd00:9:1::fffe', how: 'fd00:9:1::fffe, an unused address', explicit: false },
    ],
    returnPath: [
      {
        server: 'b4',
        address: '10.9.2.10',
        port: 25,
        family: 4,
        source: '10.9.1.254',
        outcome: 'connected',
        ms: 2,
        greeting: '220 mx ESMTP',
      },
      { server: 'b6', address: 'fd00:9:2::10', port: 25, family: 6, source: 'fd00:9:1::fffe', outcome: 'connected', ms: 3 },
    ],
    ...over,
  };
}

const byId = (fs: readonly Finding[], id: string): Finding => {
  const f = fs.find((x) => x.id === id);
  if (!f) throw new Error(`no finding ${id} in ${fs.map((x) => x.id).join(', ')}`);
  return f;
};
const notOk = (fs: readonly Finding[]) => fs.filter((f) => f.status !== 'OK').map((f) => f.id);
const probe = (server: 'b4' | 'b6', outcome: ProbeOutcome, extra = {}): ReturnProbe =>
  server === 'b4'
    ? { server, address: '10.9.2.10', port: 25, family: 4, source: '10.9.1.254', outcome, ms: 3001, ...extra }
    : { server, address: 'fd00:9:2::10', port: 25, family: 6, source: 'fd00:9:1::fffe', outcome, ms: 3001, ...extra };

// ---- small pure helpers ----------------------------------------------------------------------

describe('helpers', () => {
  it('parseCapEff reads the effective set from /proc/self/status', () => {
    expect(parseCapEff('Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\n')).toBe(
      0x1fffeffffffn,
    );
    expect(parseCapEff('Name:\tnode\n')).toBeUndefined();
  });

  it('sysctlKey uses the slash form when the interface name has a dot (VLAN)', () => {
    expect(sysctlKey('ipv4', 'eth0', 'rp_filter')).toBe('net.ipv4.conf.eth0.rp_filter');
    expect(sysctlKey('ipv4', 'eth0.100', 'rp_filter')).toBe('net/ipv4/conf/eth0.100/rp_filter');
  });

  it('effective values: rp_filter is max(all, iface), src_valid_mark is all OR iface', () => {
    expect(effectiveRpFilter(1, 0)).toBe(1);
    expect(effectiveRpFilter(1, 2)).toBe(2);
    expect(effectiveRpFilter(0, 1)).toBe(1);
    expect(effectiveRpFilter(undefined, undefined)).toBe(0);
    expect(effectiveSrcValidMark(1, 0)).toBe(1);
    expect(effectiveSrcValidMark(0, 1)).toBe(1);
    expect(effectiveSrcValidMark(0, 0)).toBe(0);
  });

  it('familiesInUse and neededFeatures follow the config', () => {
    expect(familiesInUse(VIP)).toEqual([4, 6]);
    expect(
      familiesInUse(
        cfg({ ...VIP_DOC, listeners: [VIP_DOC.listeners[0]], upstream: { ...VIP_DOC.upstream, servers: [VIP_DOC.upstream.servers[0]] } }),
      ),
    ).toEqual([4]);
    expect(neededFeatures(VIP)).toEqual(['socket']);
    expect(neededFeatures(INTERCEPT)).toEqual(['socket', 'tproxy4', 'tproxy6', 'fib']);
    expect(
      neededFeatures(
        cfg({ listeners: [{ name: 'mx', mode: 'intercept', destinations: ['10.0.0.0/8'] }], upstream: { source: 'clientip' } }),
      ),
    ).toEqual(['socket', 'tproxy4', 'fib']);
    expect(neededFeatures(PLAIN)).toEqual([]);
  });

  it('spareAddress counts down from the last-but-one host, skipping taken addresses', () => {
    const a = (local: string, prefixlen: number, family: 4 | 6 = 4): IfAddr => ({ ifname: 'x', family, local, prefixlen, scope: 'global' });
    expect(spareAddress(a('10.9.1.1', 24), new Set())).toBe('10.9.1.254');
    expect(spareAddress(a('10.9.1.1', 24), new Set(['10.9.1.254', '10.9.1.253']))).toBe('10.9.1.252');
    expect(spareAddress(a('192.168.5.77', 30), new Set())).toBe('192.168.5.78');
    expect(spareAddress(a('192.168.5.77', 31), new Set())).toBeUndefined();
    expect(spareAddress(a('fd00:9:1::1', 64, 6), new Set())).toBe('fd00:9:1:0:ffff:ffff:ffff:fffe');
  });
});

// ---- the test client ----------------------------------------------------------------------------

describe('chooseTestClient', () => {
  it("takes an unused address of a transparent listener's network, never a local address or a gateway", () => {
    const c = chooseTestClient(4, VIP, ADDRS, [{ family: 4, dev: 'veth-gc', gateway: '10.9.1.254' }]);
    expect(c.address).toBe('10.9.1.253');
    expect(c.address !== undefined && c.how).toContain("listener smtp4's network 10.9.1.0/24 (veth-gc)");
    expect(chooseTestClient(6, VIP, ADDRS, []).address).toBe('fd00:9:1:0:ffff:ffff:ffff:fffe');
  });

  it('--client wins for its family; the other family is still derived; a local address is refused', () => {
    expect(chooseTestClient(4, VIP, ADDRS, [], '198.51.100.7')).toMatchObject({ address: '198.51.100.7', explicit: true });
    expect(chooseTestClient(6, VIP, ADDRS, [], '198.51.100.7').address).toBe('fd00:9:1:0:ffff:ffff:ffff:fffe');
    expect(chooseTestClient(4, VIP, ADDRS, [], 'mx.example')).toMatchObject({
      invalid: true,
      reason: expect.stringContaining('not an IPv4 or IPv6 address'),
    });
    const own = chooseTestClient(4, VIP, ADDRS, [], '10.9.2.1');
    expect(own.address).toBeUndefined();
    expect(own).toMatchObject({ invalid: true });
  });

  it("skips a network that also holds a backend (replies would not pass etd) and falls back to the default route's network", () => {
    const oneArm = cfg({ ...VIP_DOC, listeners: [{ name: 'smtp4', address: '10.9.2.1', port: 25, mode: 'vip' }] });
    const none = chooseTestClient(4, oneArm, ADDRS, []);
    expect(none.address).toBeUndefined();
    expect(none.address === undefined && none.reason).toMatch(/also holds a backend/);
    const viaDefault = chooseTestClient(4, oneArm, ADDRS, [{ family: 4, dev: 'veth-gc', gateway: '10.9.1.100' }]);
    expect(viaDefault.address).toBe('10.9.1.254');
    expect(viaDefault.address !== undefined && viaDefault.how).toMatch(/default route/);
  });

  it('a wildcard listener without a default route gives no address, with the reason', () => {
    const c = chooseTestClient(4, cfg({ ...VIP_DOC, listeners: [{ name: 'any', address: '0.0.0.0', port: 25, mode: 'vip' }] }), ADDRS, []);
    expect(c.address).toBeUndefined();
    expect(c.address === undefined && c.reason).toMatch(/no IPv4 client-side network found/);
  });

  // Issue 25: an intercept gateway between a client network and a mail network, no default route.
  describe('intercept gateway without a default route', () => {
    const GW: IfAddr[] = [
      { ifname: 'lo', family: 4, local: '127.0.0.1', prefixlen: 8, scope: 'host' },
      { ifname: 'eth-mail', family: 4, local: '10.9.2.1', prefixlen: 24, scope: 'global' },
      { ifname: 'eth-clients', family: 4, local: '10.9.1.1', prefixlen: 24, scope: 'global' },
    ];
    const intercept = (destinations: string[]) =>
      cfg({ listeners: [{ name: 'mx', mode: 'intercept', destinations }], upstream: { source: 'clientip', forward: 'original' } });

    it('takes an unused address of a connected network outside destinations', () => {
      const c = chooseTestClient(4, intercept(['10.9.2.0/24']), GW, []);
      expect(c.address).toBe('10.9.1.254');
      expect(c.address !== undefined && c.how).toContain(
        '10.9.1.0/24 (eth-clients), a connected network outside the intercepted destinations',
      );
    });

    it('without destinations, skips the network of a --probe mail server', () => {
      const c = chooseTestClient(4, intercept([]), GW, [], undefined, ['10.9.2.10']);
      expect(c.address).toBe('10.9.1.254');
    });

    it('gives none when every connected network is intercepted, and says so', () => {
      const c = chooseTestClient(4, intercept(['10.9.0.0/16']), GW, []);
      expect(c.address).toBeUndefined();
      expect(c.address === undefined && c.reason).toMatch(
        /no IPv4 client-side network found.*10\.9\.1\.0\/24.*inside the intercepted destinations/,
      );
    });
  });
});

describe('planReturnPath', () => {
  it('tests every server with the test client of its family', () => {
    expect(planReturnPath(facts()).map((p) => [p.server, p.source])).toEqual([
      ['b4', '10.9.1.254'],
      ['b6', 'fd00:9:1::fffe'],
    ]);
  });

  it('skips, with the reason: no privilege, no addon, no test client, no route, nothing installed', () => {
    expect(planReturnPath(facts({ capabilities: { effective: without(12, 13) } }))[0]?.skipped).toMatch(/CAP_NET_ADMIN \(or CAP_NET_RAW\)/);
    expect(planReturnPath(facts({ addon: { error: 'nope' } }))[0]?.skipped).toMatch(/addon/);
    expect(planReturnPath(facts({ testClients: [{ family: 4, reason: 'none found' }] }))[0]?.skipped).toMatch(/none found/);
    expect(
      planReturnPath(facts({ routes: [{ server: 'b4', address: '10.9.2.10', port: 25, family: 4, error: 'Network is unreachable' }] }))[0]
        ?.skipped,
    ).toMatch(/no route/);
    const clean = netfilterState(Object.fromEntries(ruleIds.map((id) => [id, 'missing'])));
    expect(planReturnPath(facts({ netfilter: clean }))[0]?.skipped).toMatch(/not installed/);
  });

  it('tests nothing when the upstream source is not clientip (only plain listeners)', () => {
    expect(planReturnPath(facts({ config: PLAIN }))).toEqual([]);
  });
});

// ---- evaluate ------------------------------------------------------------------------------------

describe('evaluate', () => {
  it('a correct gateway: every finding OK, none critical-failed', () => {
    const fs = evaluate(facts());
    expect(notOk(fs)).toEqual([]);
    expect(fs.map((f) => f.id)).toEqual([
      'cap.net_admin',
      'cap.net_bind_service',
      'native.addon',
      'kernel.nft_socket',
      ...ruleIds,
      'sysctl.ip_forward',
      'sysctl.ipv6_forwarding',
      'sysctl.rp_filter',
      'sysctl.src_valid_mark',
      'client.v4',
      'client.v6',
      'return.b4',
      'return.b6',
    ]);
    expect(byId(fs, 'return.b4').detail).toContain('220 mx ESMTP');
    expect(summarize(fs)).toEqual({ OK: fs.length, WARN: 0, FAIL: 0 });
    expect(criticalFailures(fs)).toEqual([]);
  });

  it('plain listeners only: no transparency checks, only the port capability', () => {
    expect(evaluate(facts({ config: PLAIN })).map((f) => f.id)).toEqual(['mode.plain']);
    const low = cfg({ listeners: [{ name: 'p', port: 25 }], upstream: { servers: [{ name: 's', address: '127.0.0.1' }] } });
    const fs = evaluate(facts({ config: low, capabilities: { effective: without(10) } }));
    expect(byId(fs, 'cap.net_bind_service')).toMatchObject({ status: 'FAIL', critical: true });
  });

  describe('capabilities', () => {
    it('CAP_NET_ADMIN missing while etd manages netfilter: critical FAIL with the fix', () => {
      const f = byId(evaluate(facts({ capabilities: { effective: without(12) } })), 'cap.net_admin');
      expect(f).toMatchObject({ status: 'FAIL', critical: true });
      expect(f.fix).toContain('AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE');
      expect(f.fix).not.toContain('CAP_NET_RAW');
    });

    it('netfilter.manage false: CAP_NET_RAW alone is enough for IP_TRANSPARENT; neither is a FAIL', () => {
      const unmanaged = cfg({ ...VIP_DOC, netfilter: { manage: false } });
      expect(byId(evaluate(facts({ config: unmanaged, capabilities: { effective: without(12) } })), 'cap.net_admin').status).toBe('OK');
      const f = byId(evaluate(facts({ config: unmanaged, capabilities: { effective: without(12, 13) } })), 'cap.net_admin');
      expect(f.status).toBe('FAIL');
      expect(f.detail).toMatch(/CAP_NET_ADMIN or CAP_NET_RAW/);
    });

    it('CAP_NET_BIND_SERVICE only matters below ip_unprivileged_port_start', () => {
      const noBind = { capabilities: { effective: without(10) } };
      expect(byId(evaluate(facts(noBind)), 'cap.net_bind_service').status).toBe('FAIL');
      const lowered = evaluate(facts({ ...noBind, sysctls: { ...facts().sysctls, unprivilegedPortStart: 0 } }));
      expect(lowered.some((f) => f.id === 'cap.net_bind_service')).toBe(false);
    });

    it('unreadable capabilities: WARN, not FAIL', () => {
      expect(byId(evaluate(facts({ capabilities: { error: 'EACCES' } })), 'cap.net_admin').status).toBe('WARN');
    });
  });

  it('native addon missing: critical FAIL', () => {
    expect(byId(evaluate(facts({ addon: { error: 'cannot load' } })), 'native.addon')).toMatchObject({
      status: 'FAIL',
      critical: true,
      fix: expect.stringContaining('npm run install'),
    });
  });

  describe('kernel support', () => {
    it('a rejected socket rule: critical FAIL, fix modprobe nft_socket', () => {
      const f = byId(
        evaluate(
          facts({ kernel: { probes: [{ feature: 'socket', ok: false, error: 'Could not process rule: No such file or directory' }] } }),
        ),
        'kernel.nft_socket',
      );
      expect(f).toMatchObject({ status: 'FAIL', critical: true, fix: 'modprobe nft_socket' });
      expect(f.detail).toContain('No such file or directory');
    });

    it('intercept checks tproxy (v4, v6) and fib too', () => {
      const fs = evaluate(
        facts({
          config: INTERCEPT,
          kernel: {
            probes: [
              { feature: 'socket', ok: true },
              { feature: 'tproxy4', ok: true },
              { feature: 'tproxy6', ok: false, error: 'Operation not supported' },
              { feature: 'fib', ok: true },
            ],
          },
        }),
      );
      expect(byId(fs, 'kernel.nft_tproxy.v4').status).toBe('OK');
      expect(byId(fs, 'kernel.nft_tproxy.v6')).toMatchObject({ status: 'FAIL', fix: 'modprobe nft_tproxy' });
      expect(byId(fs, 'kernel.nft_fib').status).toBe('OK');
    });

    it('libnftables missing: FAIL when etd manages netfilter, WARN otherwise; no privilege: WARN', () => {
      expect(byId(evaluate(facts({ kernel: { error: 'not found', cause: 'nft_load' } })), 'kernel.nftables')).toMatchObject({
        status: 'FAIL',
        fix: 'apt-get install libnftables1',
      });
      const unmanaged = cfg({ ...VIP_DOC, netfilter: { manage: false } });
      expect(
        byId(evaluate(facts({ config: unmanaged, kernel: { error: 'not found', cause: 'nft_load' } })), 'kernel.nftables').status,
      ).toBe('WARN');
      expect(byId(evaluate(facts({ kernel: { error: 'Operation not permitted', cause: 'privilege' } })), 'kernel.nftables').status).toBe(
        'WARN',
      );
    });
  });

  describe('rules and routes', () => {
    it('a missing ip rule or local route: FAIL with the exact iproute2 command', () => {
      const fs = evaluate(facts({ netfilter: netfilterState({ 'ip.rule.v4': 'missing', 'ip.route.v6': 'missing' }) }));
      expect(byId(fs, 'ip.rule.v4')).toMatchObject({
        status: 'FAIL',
        critical: false,
        fix: 'ip -4 rule add fwmark 0x1 lookup 100 priority 100',
      });
      expect(byId(fs, 'ip.route.v6').fix).toBe('ip -6 route replace local ::/0 dev lo table 100');
    });

    it('the fix uses the configured mark, table and priority', () => {
      const c = cfg({ ...VIP_DOC, netfilter: { mark: 0x2a, table: 205, rulePriority: 42 } });
      expect(byId(evaluate(facts({ config: c, netfilter: netfilterState({ 'ip.rule.v4': 'missing' }) })), 'ip.rule.v4').fix).toBe(
        'ip -4 rule add fwmark 0x2a lookup 205 priority 42',
      );
    });

    it('a missing divert rule: FAIL, fix etd rules apply -c FILE', () => {
      const f = byId(evaluate(facts({ netfilter: netfilterState({ 'nft.rule.divert': 'missing' }) })), 'nft.rule.divert');
      expect(f).toMatchObject({ status: 'FAIL', fix: 'etd rules apply -c /etc/etd/etd.yaml' });
      expect(f.detail).toMatch(/upstream connects time out/);
    });

    it('nothing installed while etd manages netfilter: one WARN (etd not running), not a FAIL per item', () => {
      const clean = netfilterState(Object.fromEntries(ruleIds.map((id) => [id, 'missing'])));
      const fs = evaluate(facts({ netfilter: clean }));
      expect(byId(fs, 'rules')).toMatchObject({ status: 'WARN', fix: 'etd rules apply -c /etc/etd/etd.yaml' });
      expect(fs.some((f) => f.id === 'ip.rule.v4')).toBe(false);
      const unmanaged = cfg({ ...VIP_DOC, netfilter: { manage: false } });
      expect(byId(evaluate(facts({ config: unmanaged, netfilter: clean })), 'ip.rule.v4').status).toBe('FAIL');
    });

    it('duplicates and stale chains WARN; an unsupported family is OK unless the config uses it', () => {
      const fs = evaluate(
        facts({ netfilter: netfilterState({ 'ip.rule.v4': 'duplicate', 'ip.rule.v6': 'unsupported', 'ip.route.v6': 'unsupported' }) }),
      );
      expect(byId(fs, 'ip.rule.v4').status).toBe('WARN');
      expect(byId(fs, 'ip.rule.v6').status).toBe('WARN'); // VIP uses IPv6
      const v4only = cfg({
        ...VIP_DOC,
        listeners: [VIP_DOC.listeners[0]],
        upstream: { ...VIP_DOC.upstream, servers: [VIP_DOC.upstream.servers[0]] },
      });
      expect(
        byId(evaluate(facts({ config: v4only, netfilter: netfilterState({ 'ip.rule.v6': 'unsupported' }) })), 'ip.rule.v6').status,
      ).toBe('OK');
    });

    it('unreadable state: WARN', () => {
      expect(byId(evaluate(facts({ netfilter: { error: 'Operation not permitted' } })), 'rules').status).toBe('WARN');
    });

    it('no route from etd to a server: FAIL route.<name>', () => {
      const fs = evaluate(
        facts({ routes: [{ server: 'b4', address: '10.9.2.10', port: 25, family: 4, error: 'Network is unreachable' }] }),
      );
      expect(byId(fs, 'route.b4')).toMatchObject({ status: 'FAIL', critical: false });
    });
  });

  describe('sysctls', () => {
    const sys = (over: Partial<DoctorFacts['sysctls']>) => ({ ...facts().sysctls, ...over });

    it('ip_forward=0: WARN in vip mode, non-critical FAIL in intercept mode', () => {
      expect(byId(evaluate(facts({ sysctls: sys({ ipForward: 0 }) })), 'sysctl.ip_forward')).toMatchObject({
        status: 'WARN',
        fix: 'sysctl -w net.ipv4.ip_forward=1',
      });
      expect(byId(evaluate(facts({ config: INTERCEPT, sysctls: sys({ ipForward: 0 }) })), 'sysctl.ip_forward')).toMatchObject({
        status: 'FAIL',
        critical: false,
      });
      expect(byId(evaluate(facts({ sysctls: sys({ ipv6Forwarding: 0 }) })), 'sysctl.ipv6_forwarding').fix).toBe(
        'sysctl -w net.ipv6.conf.all.forwarding=1',
      );
    });

    it('strict rp_filter on a path interface: a doctor FAIL but not critical at start (a symmetric path works), fix sets exactly the strict keys to loose', () => {
      const ifs = [
        { name: 'veth-gb', why: ['route to server b4'], rpFilter: 1, srcValidMark: 0 },
        { name: 'veth-gc', why: ['listener smtp4'], rpFilter: 2, srcValidMark: 0 },
      ];
      const f = byId(evaluate(facts({ interfaces: ifs })), 'sysctl.rp_filter');
      expect(f).toMatchObject({ status: 'FAIL', critical: false, fix: 'sysctl -w net.ipv4.conf.veth-gb.rp_filter=2' });
      expect(f.detail).toContain('veth-gb (route to server b4)');
      expect(f.detail).not.toContain('veth-gc');
    });

    it('conf/all=1 makes every interface strict unless raised to 2: the fix lowers all', () => {
      const ifs = [
        { name: 'veth-gb', why: ['route to server b4'], rpFilter: 0, srcValidMark: 0 },
        { name: 'eth0.100', why: ['listener smtp4'], rpFilter: 1, srcValidMark: 0 },
        { name: 'veth-gc', why: ['x'], rpFilter: 2, srcValidMark: 0 },
      ];
      const f = byId(evaluate(facts({ interfaces: ifs, sysctls: sys({ rpFilter: { all: 1, default: 0 } }) })), 'sysctl.rp_filter');
      expect(f.status).toBe('FAIL');
      expect(f.fix).toBe('sysctl -w net.ipv4.conf.all.rp_filter=2 net/ipv4/conf/eth0.100/rp_filter=2');
    });

    it('loose rp_filter is OK; default=1 WARNs about interfaces created later', () => {
      const fs = evaluate(facts({ sysctls: sys({ rpFilter: { all: 2, default: 1 } }) }));
      expect(byId(fs, 'sysctl.rp_filter').status).toBe('OK');
      expect(byId(fs, 'sysctl.rp_filter.default')).toMatchObject({ status: 'WARN', fix: 'sysctl -w net.ipv4.conf.default.rp_filter=2' });
    });

    it('src_valid_mark=1 (all or one interface): critical FAIL with the keys to reset', () => {
      const all = byId(evaluate(facts({ sysctls: sys({ srcValidMark: { all: 1, default: 0 } }) })), 'sysctl.src_valid_mark');
      expect(all).toMatchObject({ status: 'FAIL', critical: true, fix: 'sysctl -w net.ipv4.conf.all.src_valid_mark=0' });
      expect(all.detail).toMatch(/martian/);
      const ifs = [{ name: 'veth-gb', why: ['route to server b4'], rpFilter: 0, srcValidMark: 1 }];
      expect(byId(evaluate(facts({ interfaces: ifs })), 'sysctl.src_valid_mark').fix).toBe(
        'sysctl -w net.ipv4.conf.veth-gb.src_valid_mark=0',
      );
      expect(
        byId(evaluate(facts({ sysctls: sys({ srcValidMark: { all: 0, default: 1 } }) })), 'sysctl.src_valid_mark.default').status,
      ).toBe('WARN');
    });

    it('IPv4 sysctls are not judged for an IPv6-only config', () => {
      const v6only = cfg({
        ...VIP_DOC,
        listeners: [VIP_DOC.listeners[1]],
        upstream: { ...VIP_DOC.upstream, servers: [VIP_DOC.upstream.servers[1]] },
      });
      const fs = evaluate(facts({ config: v6only, sysctls: sys({ srcValidMark: { all: 1 }, rpFilter: { all: 1 }, ipForward: 0 }) }));
      expect(
        fs.some((f) => f.id.startsWith('sysctl.src_valid_mark') || f.id.startsWith('sysctl.rp_filter') || f.id === 'sysctl.ip_forward'),
      ).toBe(false);
    });
  });

  describe('test client and return path', () => {
    it('no test client: WARN with the --client fix; the probe is reported as not tested', () => {
      const fs = evaluate(
        facts({
          testClients: [{ family: 4, reason: 'no IPv4 client-side network found' }, facts().testClients[1]!],
          returnPath: [
            { server: 'b4', address: '10.9.2.10', port: 25, family: 4, skipped: 'no IPv4 test client address' },
            facts().returnPath![1]!,
          ],
        }),
      );
      expect(byId(fs, 'client.v4')).toMatchObject({ status: 'WARN', fix: expect.stringContaining('--client ADDRESS') });
      expect(byId(fs, 'return.b4')).toMatchObject({ status: 'WARN', detail: expect.stringContaining('not tested') });
    });

    it('refused: the reset came back through etd, so only a WARN about the server', () => {
      const f = byId(evaluate(facts({ returnPath: [probe('b4', 'refused')] })), 'return.b4');
      expect(f.status).toBe('WARN');
      expect(f.detail).toMatch(/return path works/);
    });

    it('timeout with nothing wrong locally: FAIL, fix = route via etd (picture 1) or PBR (picture 2), per family', () => {
      const fs = evaluate(facts({ returnPath: [probe('b4', 'timeout'), probe('b6', 'timeout')] }));
      const f4 = byId(fs, 'return.b4');
      expect(f4).toMatchObject({ status: 'FAIL', critical: false });
      expect(f4.fix).toBe(
        'on b4: ip route replace default via 10.9.2.1   — or, with a PBR router, on the router: scripts/pbr-linux.sh apply --etd 10.9.2.1 --from 10.9.2.10/32',
      );
      expect(f4.detail).toContain('10.9.1.254');
      expect(byId(fs, 'return.b6').fix).toContain('ip -6 route replace default via fd00:9:2::1');
      expect(byId(fs, 'return.b6').fix).toContain('--from fd00:9:2::10/128');
    });

    it('timeout explained by a local FAIL: names it instead of blaming the route (same family only)', () => {
      const fs = evaluate(
        facts({
          netfilter: netfilterState({ 'ip.rule.v4': 'missing' }),
          returnPath: [probe('b4', 'timeout'), probe('b6', 'timeout')],
        }),
      );
      expect(byId(fs, 'return.b4').detail).toContain('ip.rule.v4');
      expect(byId(fs, 'return.b4').fix).toMatch(/^fix ip\.rule\.v4 first/);
      expect(byId(fs, 'return.b6').fix).toContain('ip -6 route replace default');
      const svm = evaluate(facts({ sysctls: { ...facts().sysctls, srcValidMark: { all: 1 } }, returnPath: [probe('b4', 'timeout')] }));
      expect(byId(svm, 'return.b4').detail).toContain('sysctl.src_valid_mark');
    });

    it('intercept without servers: the return path is reported as not tested', () => {
      const fs = evaluate(
        facts({
          config: INTERCEPT,
          kernel: { probes: neededFeatures(INTERCEPT).map((feature) => ({ feature, ok: true })) },
          returnPath: [],
        }),
      );
      expect(byId(fs, 'return')).toMatchObject({ status: 'WARN', detail: expect.stringContaining('not tested') });
      expect(fs.some((f) => f.id.startsWith('client.'))).toBe(false);
    });

    it('routed server (etd reaches it through a router): the fix is the router-side PBR, never a default route on the server', () => {
      const routed = facts({
        routes: [{ server: 'b4', address: '10.9.5.10', port: 25, family: 4, dev: 'veth-gb', prefsrc: '10.9.2.1', gateway: '10.9.2.254' }],
        returnPath: [{ ...probe('b4', 'timeout'), address: '10.9.5.10' }],
      });
      const f = byId(evaluate(routed), 'return.b4');
      expect(f.status).toBe('FAIL');
      expect(f.detail).toContain('through the router 10.9.2.254');
      expect(f.fix).not.toContain('route replace default');
      expect(f.fix).toMatch(/^not on b4 .*router 10\.9\.2\.254/);
      expect(f.fix).toContain('scripts/pbr-linux.sh apply --etd 10.9.2.1 --from 10.9.5.10/32');
      expect(f.fix).toContain('--mark 0x25');
      expect(f.fix).toContain('FRRouting: pbr-map etd seq 10, match src-ip 10.9.5.10/32, match mark 37 (0x25');
      expect(f.fix).toContain('set nexthop 10.9.2.1');
    });

    it('intercept with forward: original: the untested return path names --probe; with probes they are tested instead', () => {
      const config = INTERCEPT;
      const kernel = { probes: neededFeatures(config).map((feature) => ({ feature, ok: true })) };
      const untested = byId(evaluate(facts({ config, kernel, returnPath: [] })), 'return');
      expect(untested).toMatchObject({ status: 'WARN' });
      expect(untested.detail).toContain('forward: original');
      expect(untested.fix).toBe(
        'etd doctor -c /etc/etd/etd.yaml --probe ADDRESS[:PORT]   (repeatable: each mail server whose port-25 traffic etd intercepts)',
      );

      const mx = parseProbe('10.9.2.10');
      const probed = facts({ config, kernel, probes: [mx] });
      expect(planReturnPath(probed)).toEqual([{ ...mx, source: '10.9.1.254' }]);
      const fs = evaluate({ ...probed, returnPath: [{ ...mx, source: '10.9.1.254', outcome: 'connected', ms: 2 }] });
      expect(fs.some((x) => x.id === 'return')).toBe(false);
      expect(byId(fs, 'return.probe:10.9.2.10:25')).toMatchObject({
        status: 'OK',
        what: expect.stringContaining('mail server 10.9.2.10:25 (--probe)'),
      });
      const timedOut = evaluate({ ...probed, returnPath: [{ ...mx, source: '10.9.1.254', outcome: 'timeout', ms: 3000 }] });
      expect(byId(timedOut, 'return.probe:10.9.2.10:25').fix).toMatch(/^on 10\.9\.2\.10: ip route replace default/);
    });

    it('unreachable and other errors FAIL with the error text', () => {
      expect(byId(evaluate(facts({ returnPath: [probe('b4', 'unreachable', { error: 'EHOSTUNREACH' })] })), 'return.b4').detail).toContain(
        'EHOSTUNREACH',
      );
    });
  });

  it('without the return-path test (the start preflight) there are no test-client or return findings', () => {
    const fs = evaluate({ ...facts(), returnPath: undefined, testClients: [{ family: 4, reason: 'none' }] });
    expect(fs.some((f) => f.id.startsWith('client.') || f.id.startsWith('return'))).toBe(false);
  });

  it('criticalFailures keeps only critical FAILs', () => {
    const fs = evaluate(
      facts({
        sysctls: { ...facts().sysctls, srcValidMark: { all: 1 }, ipForward: 0 },
        netfilter: netfilterState({ 'ip.rule.v4': 'missing' }),
        returnPath: [probe('b4', 'timeout')],
      }),
    );
    expect(criticalFailures(fs).map((f) => f.id)).toEqual(['sysctl.src_valid_mark']);
    expect(summarize(fs)).toMatchObject({ FAIL: 3, WARN: 1 });
  });
});

describe('formatFindings', () => {
  it('aligns status and id, indents detail and fix; OK findings have no fix line', () => {
    const lines = formatFindings([
      { id: 'a', status: 'OK', what: 'first', detail: 'fine', critical: false },
      { id: 'sysctl.rp_filter', status: 'FAIL', what: 'second', detail: 'strict', fix: 'sysctl -w x=2', critical: true },
    ]);
    expect(lines).toEqual([
      'OK    a                 first',
      '                        fine',
      'FAIL  sysctl.rp_filter  second',
      '                        strict',
      '                        fix: sysctl -w x=2',
    ]);
  });
});
