// Unit tests for src/config/cidrMath.ts: the network of an interface address, prefix overlap, a spare host.

import { describe, expect, it } from 'vitest';
import { type Cidr, parseCidr } from '../../src/config/cidr.js';
import { cidrsOverlap, networkOf, spareHost } from '../../src/config/cidrMath.js';

const c = (text: string): Cidr => {
  const r = parseCidr(text);
  if (typeof r === 'string') throw new Error(r);
  return r;
};

describe('networkOf', () => {
  it('clears the host bits of an interface address, in both families', () => {
    expect(networkOf('10.9.1.1', 24)).toMatchObject({ family: 4, prefix: 24, text: '10.9.1.0/24' });
    expect(networkOf('fd00:9:1::1', 64)?.text).toBe('fd00:9:1::/64');
    expect(networkOf('10.9.1.1', 32)?.text).toBe('10.9.1.1/32');
  });
  it('refuses what is not an address or a length out of range', () => {
    expect(networkOf('mx.example', 24)).toBeUndefined();
    expect(networkOf('10.0.0.1', 33)).toBeUndefined();
    expect(networkOf('10.0.0.1', -1)).toBeUndefined();
  });
});

describe('cidrsOverlap', () => {
  it('is true when one prefix holds the other, either way round', () => {
    expect(cidrsOverlap(c('10.0.0.0/8'), c('10.9.1.0/24'))).toBe(true);
    expect(cidrsOverlap(c('10.9.1.0/24'), c('10.0.0.0/8'))).toBe(true);
    expect(cidrsOverlap(c('10.9.1.0/24'), c('10.9.1.0/24'))).toBe(true);
  });
  it('is false for disjoint prefixes and across families', () => {
    expect(cidrsOverlap(c('10.9.1.0/24'), c('10.9.2.0/24'))).toBe(false);
    expect(cidrsOverlap(c('10.9.1.0/24'), c('fd00::/8'))).toBe(false);
  });
});

describe('spareHost', () => {
  it('counts down from the last-but-one host, skipping taken addresses', () => {
    expect(spareHost(c('10.9.1.0/24'), new Set())).toBe('10.9.1.254');
    expect(spareHost(c('10.9.1.0/24'), new Set(['10.9.1.254', '10.9.1.253']))).toBe('10.9.1.252');
    expect(spareHost(c('fd00:9:1::/64'), new Set())).toBe('fd00:9:1:0:ffff:ffff:ffff:fffe');
  });
  it('gives none for a prefix too small or when every candidate is taken, never the network address', () => {
    expect(spareHost(c('10.9.1.0/31'), new Set())).toBeUndefined();
    expect(spareHost(c('10.9.1.0/30'), new Set())).toBe('10.9.1.2');
    expect(spareHost(c('10.9.1.0/30'), new Set(['10.9.1.2', '10.9.1.1']))).toBeUndefined();
    const all = new Set(Array.from({ length: 16 }, (_, i) => `10.9.1.${254 - i}`));
    expect(spareHost(c('10.9.1.0/24'), all)).toBeUndefined();
  });
});
