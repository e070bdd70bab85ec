// Unit tests for the pure parts of src/netfilter/setup.ts: reading `nft -j list table` back into checks, and stale-chain detection.

import { describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { checkTable, netfilterRequired, parseTable, staleChains } from '../../src/netfilter/setup.js';
import { netfilterConfig } from '../helpers/netfilterConfig.js';

const config = netfilterConfig;

// Captured from `nft -j list table inet etd` (nftables 1.0.6) after applying a batch with
// ip daddr { 10.0.0.0/8, 11.0.0.0/8, 192.0.2.7 } and ip6 daddr { 2001:db8::/32 }, plus a foreign-looking range rule.
const LIVE = JSON.parse(
  `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "etd", "handle": 1}}, {"chain": {"family": "inet", "table": "etd", "name": "divert", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}, {"chain": {"family": "inet", "table": "etd", "name": "intercept", "handle": 3, "type": "filter", "hook": "prerouting", "prio": -149, "policy": "accept"}}, {"rule": {"family": "inet", "table": "etd", "chain": "divert", "handle": 2, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"match": {"op": "==", "left": {"socket": {"key": "transparent"}}, "right": 1}}, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "etd", "chain": "intercept", "handle": 4, "expr": [{"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}, {"return": null}]}}, {"rule": {"family": "inet", "table": "etd", "chain": "intercept", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 25}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.0.0.0", "len": 7}}, "192.0.2.7"]}}}, {"tproxy": {"family": "ip", "addr": "127.0.0.1", "port": 10025}}, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "etd", "chain": "intercept", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 25}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "2001:db8::", "len": 32}}}}, {"tproxy": {"family": "ip6", "addr": "::1", "port": 10025}}, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "etd", "chain": "intercept", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 25}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"range": ["10.1.2.3", "10.1.2.9"]}}}, {"accept": null}]}}]}`,
);

const statuses = (c: Config, live = parseTable(LIVE)) => Object.fromEntries(checkTable(live, c).map((i) => [i.id, i.status]));

describe('checkTable', () => {
  it('recognises every rule, comparing destinations as address ranges (nft merged 10/8 + 11/8 into 10/7)', () => {
    const c = config([{ name: 'mx', mode: 'intercept', destinations: ['11.0.0.0/8', '192.0.2.7', '10.0.0.0/8', '2001:db8::/32'] }]);
    expect(statuses(c)).toEqual({
      'nft.table': 'ok',
      'nft.chain.divert': 'ok',
      'nft.chain.intercept': 'ok',
      'nft.rule.divert': 'ok',
      'nft.rule.intercept.local': 'ok',
      'nft.rule.intercept.mx.v4': 'ok',
      'nft.rule.intercept.mx.v6': 'ok',
    });
  });

  it('other destinations, another mark or tproxy port do not count as present', () => {
    const dest = config([{ name: 'mx', mode: 'intercept', destinations: ['10.0.0.0/8', '192.0.2.7', '2001:db8::/48'] }]);
    expect(statuses(dest)).toMatchObject({ 'nft.rule.intercept.mx.v4': 'missing', 'nft.rule.intercept.mx.v6': 'missing' });
    const mark = config([{ name: 'mx', mode: 'intercept' }], { mark: 2 });
    expect(statuses(mark)).toMatchObject({ 'nft.rule.divert': 'missing', 'nft.rule.intercept.mx.v4': 'missing' });
    const port = config([{ name: 'mx', mode: 'intercept', destinations: ['2001:db8::/32'] }], { tproxyPort: 2525 });
    expect(statuses(port)).toMatchObject({ 'nft.rule.intercept.mx.v6': 'missing' });
    // A rule without destinations must not be mistaken for one with them, nor the reverse.
    expect(statuses(config([{ name: 'mx', mode: 'intercept' }]))).toMatchObject({
      'nft.rule.intercept.mx.v4': 'missing',
      'nft.rule.intercept.mx.v6': 'missing',
    });
  });

  it('a vip config sees the intercept chain as stale', () => {
    const c = config([{ mode: 'vip' }]);
    expect(statuses(c)).toEqual({
      'nft.table': 'ok',
      'nft.chain.divert': 'ok',
      'nft.rule.divert': 'ok',
      'nft.chain.intercept': 'unexpected',
    });
    expect(staleChains(parseTable(LIVE), c)).toEqual(['intercept']);
  });

  it('a chain with another priority is a mismatch and gets replaced', () => {
    const live = parseTable(LIVE);
    const moved = { ...live, chains: live.chains.map((ch) => (ch.name === 'divert' ? { ...ch, prio: 0 } : ch)) };
    const c = config([{ mode: 'intercept' }]);
    expect(statuses(c, moved)['nft.chain.divert']).toBe('mismatch');
    expect(staleChains(moved, c)).toEqual(['divert']);
  });

  it('an absent table: everything missing, nothing stale', () => {
    const c = config([{ mode: 'vip' }]);
    expect(checkTable(undefined, c).map((i) => [i.id, i.status, i.present])).toEqual([
      ['nft.table', 'missing', false],
      ['nft.chain.divert', 'missing', false],
      ['nft.rule.divert', 'missing', false],
    ]);
    expect(staleChains(undefined, c)).toEqual([]);
  });

  it('duplicated rules are reported with their count', () => {
    const live = parseTable(LIVE);
    const dup = { ...live, rules: [...live.rules, ...live.rules.filter((r) => r.chain === 'divert')] };
    const item = checkTable(dup, config([{ mode: 'vip' }])).find((i) => i.id === 'nft.rule.divert');
    expect(item).toMatchObject({ status: 'duplicate', present: true, detail: '2 copies (expected 1)' });
  });
});

describe('netfilterRequired', () => {
  it('only transparent listeners need rules', () => {
    expect(netfilterRequired(config([{ mode: 'plain' }]))).toBe(false);
    expect(netfilterRequired(config([{ mode: 'plain' }, { mode: 'vip' }]))).toBe(true);
  });
});
