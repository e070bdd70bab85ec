// Access lists: most specific match wins, deny first at equal length, batches with one onChange, access.maxEntries, a parsed address matched.

import { describe, expect, it } from 'vitest';
import { type Address, type Cidr, parseAddress, parseCidr } from '../../src/config/cidr.js';
import { AccessLists } from '../../src/policy/access.js';

describe('AccessLists', () => {
  it('the most specific prefix wins; at equal length deny wins; IPv4-mapped clients match IPv4 entries', () => {
    const a = new AccessLists({ allow: ['192.0.2.7', '2001:db8:1::/48'], deny: ['192.0.2.0/24', '2001:db8::/32', '0.0.0.0/0'] });
    expect(a.match('192.0.2.7')?.list).toBe('allow');
    expect(a.match('::ffff:192.0.2.8')?.list).toBe('deny');
    expect(a.match('198.51.100.1')?.cidr.prefix).toBe(0);
    expect(a.match('2001:db8:1::5')?.list).toBe('allow');
    expect(a.match('2001:db8:2::5')?.list).toBe('deny');
    expect(a.match('2001:db9::1')).toBeUndefined();
    expect(a.match('fe80::1%eth0')).toBeUndefined();
    a.add('192.0.2.0/25', 'allow');
    a.add('192.0.2.0/25', 'deny', 'config');
    expect(a.match('192.0.2.9')?.list).toBe('deny');
    expect(a.list().map((e) => `${e.cidr.text} ${e.list}`)).toEqual([
      // by prefix length across families, deny first at equal length (as before)
      '2001:db8:1::/48 allow',
      '2001:db8::/32 deny',
      '192.0.2.7 allow',
      '192.0.2.0/25 deny',
      '192.0.2.0/25 allow',
      '192.0.2.0/24 deny',
      '0.0.0.0/0 deny',
    ]);
  });

  it('matches a parsed address the same as its text', () => {
    const a = new AccessLists({ allow: [], deny: ['10.0.0.0/8'] });
    expect(a.match(parseAddress('10.1.2.3') as Address)?.list).toBe('deny');
    expect(a.match(parseAddress('::ffff:10.1.2.3') as Address)?.list).toBe('deny');
  });

  it('applyBatch: one onChange for many changes; deletes; refuses bad CIDRs and config prefixes with the reason', () => {
    const a = new AccessLists({ allow: [], deny: ['198.51.100.0/24'] });
    let changes = 0;
    a.onChange = () => changes++;
    const changesIn = Array.from({ length: 1000 }, (_, i) => ({ cidr: `10.0.${i >> 2}.${(i & 3) * 64}/26`, list: 'deny' as const }));
    const r = a.applyBatch([...changesIn, { cidr: 'fe80::%x/64', list: 'deny' }, { cidr: '198.51.100.0/24', list: 'allow' }]);
    expect(changes).toBe(1);
    expect(r.applied.length).toBe(1000);
    expect(r.rejected.map((x) => x.reason)).toEqual([
      expect.stringMatching(/zone ID/),
      expect.stringMatching(/config file.*the file wins/),
    ]);
    expect(a.runtimeSize).toBe(1000);
    expect(a.applyBatch([{ cidr: '10.0.0.0/26', list: 'deny' }]).applied).toEqual([]); // no change: no onChange
    expect(changes).toBe(1);
    a.applyBatch(changesIn.map((c) => ({ cidr: c.cidr, list: undefined })));
    expect(changes).toBe(2);
    expect(a.runtimeSize).toBe(0);
    expect(a.match('10.0.0.1')).toBeUndefined();
  });

  it('applyBatch with notify false leaves the onChange to the caller; a prefix parsed at the border is taken as it is', () => {
    const a = new AccessLists({ allow: [], deny: [] });
    let changes = 0;
    a.onChange = () => changes++;
    const parsed = parseCidr('192.0.2.0/24') as Cidr;
    const r = a.applyBatch(
      [
        { cidr: '192.0.2.0/24', list: 'deny', parsed },
        { cidr: '2001:DB8::/32', list: 'allow' },
      ],
      'runtime',
      {
        notify: false,
      },
    );
    expect(changes).toBe(0);
    // Canonical text out, whatever the spelling in.
    expect(r.applied).toEqual([
      { cidr: '192.0.2.0/24', list: 'deny' },
      { cidr: '2001:db8::/32', list: 'allow' },
    ]);
    expect(a.match('192.0.2.9')?.cidr).toBe(parsed);
    expect(a.match('192.0.2.9')?.canonical).toBe('192.0.2.0/24');
  });

  it('runtimeLists: the runtime entries by canonical text, kept up to date (config entries are not in it)', () => {
    const a = new AccessLists({ allow: [], deny: ['198.51.100.0/24'] });
    const view = a.runtimeLists();
    a.add('192.0.2.0/24', 'deny');
    a.applyBatch([{ cidr: '2001:DB8::/32', list: 'deny' }]);
    expect([...view]).toEqual([
      ['192.0.2.0/24', 'deny'],
      ['2001:db8::/32', 'deny'],
    ]);
    a.add('192.0.2.0/24', 'allow');
    expect(view.get('192.0.2.0/24')).toBe('allow');
    a.remove('192.0.2.0/24');
    a.applyBatch([
      { cidr: '2001:db8::/32', list: undefined },
      { cidr: '10.0.0.0/8', list: 'allow' },
    ]);
    expect([...view]).toEqual([['10.0.0.0/8', 'allow']]);
  });

  it('applyBatch is one batch with one onChange', () => {
    const a = new AccessLists({ allow: [], deny: [] });
    let changes = 0;
    a.onChange = () => changes++;
    a.applyBatch(Array.from({ length: 500 }, (_, i) => ({ cidr: `2001:db8:${i.toString(16)}::/48`, list: 'deny' as const })));
    expect(changes).toBe(1);
    expect([...a.runtimeLists()].length).toBe(500);
  });

  it('access.maxEntries caps runtime entries with a clear refusal; replacing an existing prefix still works', () => {
    const a = new AccessLists({ allow: [], deny: ['10.0.0.0/8'], maxEntries: 2 });
    expect(typeof a.add('192.0.2.0/24', 'deny')).toBe('object');
    expect(typeof a.add('192.0.3.0/24', 'deny')).toBe('object');
    expect(a.add('192.0.4.0/24', 'deny')).toMatch(/access\.maxEntries: 2/);
    expect(typeof a.add('192.0.3.0/24', 'allow')).toBe('object');
    const r = a.applyBatch([{ cidr: '192.0.5.0/24', list: 'deny' }]);
    expect(r.rejected[0]?.reason).toMatch(/full/);
    a.replaceConfig({ allow: [], deny: [], maxEntries: 3 });
    expect(typeof a.add('192.0.4.0/24', 'deny')).toBe('object');
    expect(a.match('10.1.1.1')).toBeUndefined(); // the config entry went with the reload
  });

  it('agrees with a linear scan on random lists (the old semantics)', () => {
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const entries: Array<{ cidr: string; list: 'allow' | 'deny'; net: number; len: number }> = [];
    const a = new AccessLists({ allow: [], deny: [] });
    for (let i = 0; i < 300; i++) {
      const len = rnd(33);
      const net = len === 0 ? 0 : ((rnd(0x7fffffff) * 2) & ((0xffffffff << (32 - len)) >>> 0)) >>> 0;
      const text = `${net >>> 24}.${(net >> 16) & 255}.${(net >> 8) & 255}.${net & 255}/${len}`;
      const list = rnd(2) ? 'allow' : 'deny';
      if (typeof a.add(text, list) === 'string') continue;
      const old = entries.findIndex((e) => e.net === net && e.len === len);
      if (old >= 0) entries.splice(old, 1);
      entries.push({ cidr: text, list, net, len });
    }
    for (let i = 0; i < 2000; i++) {
      const ip = (rnd(0x7fffffff) * 2 + rnd(2)) >>> 0;
      const text = `${ip >>> 24}.${(ip >> 16) & 255}.${(ip >> 8) & 255}.${ip & 255}`;
      const hits = entries.filter((e) => e.len === 0 || (ip ^ e.net) >>> (32 - e.len) === 0);
      hits.sort((x, y) => y.len - x.len || (x.list === 'deny' ? -1 : 1));
      expect(a.match(text)?.list, text).toBe(hits[0]?.list);
    }
  });
});
