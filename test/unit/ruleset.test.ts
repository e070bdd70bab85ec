// Unit tests for src/netfilter/ruleset.ts: the exact nft batch text etd applies and removes.

import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { desiredChains, interceptRules, removeBatch, rulesetBatch } from '../../src/netfilter/ruleset.js';
import { netfilterConfig } from '../helpers/netfilterConfig.js';

const config = netfilterConfig;

const HEAD = [
  'add table inet etd',
  'flush table inet etd',
  'add chain inet etd divert { type filter hook prerouting priority mangle; policy accept; }',
  'add rule inet etd divert meta l4proto tcp socket transparent 1 meta mark set 0x1 accept',
];
const INTERCEPT_HEAD = [
  'add chain inet etd intercept { type filter hook prerouting priority mangle + 1; policy accept; }',
  'add rule inet etd intercept fib daddr type local return',
];
const batch = (...lines: string[]) => `${lines.join('\n')}\n`;

describe('rulesetBatch', () => {
  it('vip: only the divert chain', () => {
    expect(rulesetBatch(config([{ mode: 'vip' }]))).toBe(batch(...HEAD));
    expect(desiredChains(config([{ mode: 'vip' }])).map((c) => c.name)).toEqual(['divert']);
  });

  it('plain-only configs still get the divert chain (the caller decides whether to apply)', () => {
    expect(rulesetBatch(config([{ mode: 'plain' }]))).toBe(batch(...HEAD));
  });

  it('intercept without destinations: v4 and v6 TPROXY rules, as in DESIGN §3', () => {
    expect(rulesetBatch(config([{ mode: 'intercept' }]))).toBe(
      batch(
        ...HEAD,
        ...INTERCEPT_HEAD,
        'add rule inet etd intercept tcp dport 25 tproxy ip to 127.0.0.1:10025 meta mark set 0x1 accept',
        'add rule inet etd intercept tcp dport 25 tproxy ip6 to [::1]:10025 meta mark set 0x1 accept',
      ),
    );
  });

  it('intercept with IPv4 destinations only: no IPv6 rule', () => {
    expect(rulesetBatch(config([{ mode: 'intercept', destinations: ['192.0.2.0/24', '198.51.100.7'] }]))).toBe(
      batch(
        ...HEAD,
        ...INTERCEPT_HEAD,
        'add rule inet etd intercept tcp dport 25 ip daddr { 192.0.2.0/24, 198.51.100.7 } tproxy ip to 127.0.0.1:10025 meta mark set 0x1 accept',
      ),
    );
  });

  it('intercept with IPv6 destinations only: no IPv4 rule', () => {
    expect(rulesetBatch(config([{ mode: 'intercept', destinations: ['2001:db8::/32', '2001:DB8:0:0::25/128'] }]))).toBe(
      batch(
        ...HEAD,
        ...INTERCEPT_HEAD,
        'add rule inet etd intercept tcp dport 25 ip6 daddr { 2001:db8::/32, 2001:db8::25 } tproxy ip6 to [::1]:10025 meta mark set 0x1 accept',
      ),
    );
  });

  it('intercept with mixed destinations: one rule per family with its own prefixes; IPv4-mapped counts as IPv4', () => {
    expect(
      rulesetBatch(config([{ mode: 'intercept', port: 587, destinations: ['2001:db8:1::/48', '10.0.0.0/8', '::ffff:192.0.2.9'] }])),
    ).toBe(
      batch(
        ...HEAD,
        ...INTERCEPT_HEAD,
        'add rule inet etd intercept tcp dport 587 ip daddr { 10.0.0.0/8, 192.0.2.9 } tproxy ip to 127.0.0.1:10025 meta mark set 0x1 accept',
        'add rule inet etd intercept tcp dport 587 ip6 daddr { 2001:db8:1::/48 } tproxy ip6 to [::1]:10025 meta mark set 0x1 accept',
      ),
    );
  });

  it('custom mark (hex), tableName and tproxyPort; table and rulePriority are routing-only', () => {
    const c = config([{ mode: 'intercept', destinations: ['203.0.113.0/24'] }], {
      mark: 0xbeef,
      table: 205,
      rulePriority: 42,
      tproxyPort: 2525,
      tableName: 'etd_gw1',
    });
    expect(rulesetBatch(c)).toBe(
      batch(
        'add table inet etd_gw1',
        'flush table inet etd_gw1',
        'add chain inet etd_gw1 divert { type filter hook prerouting priority mangle; policy accept; }',
        'add rule inet etd_gw1 divert meta l4proto tcp socket transparent 1 meta mark set 0xbeef accept',
        'add chain inet etd_gw1 intercept { type filter hook prerouting priority mangle + 1; policy accept; }',
        'add rule inet etd_gw1 intercept fib daddr type local return',
        'add rule inet etd_gw1 intercept tcp dport 25 ip daddr { 203.0.113.0/24 } tproxy ip to 127.0.0.1:2525 meta mark set 0xbeef accept',
      ),
    );
  });

  it('the largest mark prints as 0xffffffff', () => {
    expect(rulesetBatch(config([{ mode: 'vip' }], { mark: 0xffffffff }))).toContain('meta mark set 0xffffffff accept');
  });

  it('several intercept listeners: rules in listener order, identical rules once; vip listeners add nothing', () => {
    const c = config([
      { name: 'a', mode: 'intercept', destinations: ['192.0.2.0/24'] },
      { name: 'v', mode: 'vip', port: 2525 },
      { name: 'b', mode: 'intercept', port: 465 },
      { name: 'c', mode: 'intercept', destinations: ['192.0.2.0/24'], address: '::' },
    ]);
    expect(rulesetBatch(c)).toBe(
      batch(
        ...HEAD,
        ...INTERCEPT_HEAD,
        'add rule inet etd intercept tcp dport 25 ip daddr { 192.0.2.0/24 } tproxy ip to 127.0.0.1:10025 meta mark set 0x1 accept',
        'add rule inet etd intercept tcp dport 465 tproxy ip to 127.0.0.1:10025 meta mark set 0x1 accept',
        'add rule inet etd intercept tcp dport 465 tproxy ip6 to [::1]:10025 meta mark set 0x1 accept',
      ),
    );
  });

  it('dropChains deletes stale chains right after the flush, in the same transaction', () => {
    expect(rulesetBatch(config([{ mode: 'vip' }]), { dropChains: ['intercept', 'old'] })).toBe(
      batch(HEAD[0]!, HEAD[1]!, 'delete chain inet etd intercept', 'delete chain inet etd old', HEAD[2]!, HEAD[3]!),
    );
  });

  it('the schema defaults produce exactly the DESIGN §3 ruleset', () => {
    const c = validateConfig({ listeners: [{ name: 'mx', mode: 'intercept' }], upstream: { source: 'clientip' } });
    expect(rulesetBatch(c)).toBe(
      batch(
        ...HEAD,
        ...INTERCEPT_HEAD,
        'add rule inet etd intercept tcp dport 25 tproxy ip to 127.0.0.1:10025 meta mark set 0x1 accept',
        'add rule inet etd intercept tcp dport 25 tproxy ip6 to [::1]:10025 meta mark set 0x1 accept',
      ),
    );
  });

  it('is pure: the same config gives the same text, and the config is not modified', () => {
    const c = Object.freeze(config([{ mode: 'intercept', destinations: ['10.0.0.0/8'] }]));
    expect(rulesetBatch(c)).toBe(rulesetBatch(c));
  });
});

describe('interceptRules', () => {
  it('splits destinations by family and keeps parsed prefixes', () => {
    const rules = interceptRules({
      name: 'x',
      address: '0.0.0.0',
      port: 25,
      mode: 'intercept',
      backlog: 1,
      destinations: ['10.0.0.0/8', '2001:db8::/32'],
    });
    expect(rules.map((r) => [r.family, r.destinations.map((d) => d.text)])).toEqual([
      [4, ['10.0.0.0/8']],
      [6, ['2001:db8::/32']],
    ]);
  });
});

describe('removeBatch', () => {
  it('adds then deletes the table: one transaction that succeeds whether or not the table exists', () => {
    expect(removeBatch(config([{ mode: 'vip' }]))).toBe('add table inet etd\ndelete table inet etd\n');
    expect(removeBatch(config([{ mode: 'vip' }], { tableName: 'etd_gw1' }))).toBe('add table inet etd_gw1\ndelete table inet etd_gw1\n');
  });
});
