// CIDR parsing and matching, IPv4 and IPv6, with host-bit errors that suggest the fix.

import { describe, expect, it } from 'vitest';
import { cidrContains, formatAddress, normalizeAddress, parseCidr, type Cidr } from '../../src/config/cidr.js';

describe('cidr', () => {
  it('parses and matches', () => {
    const v4 = parseCidr('10.0.0.0/8') as Cidr;
    expect(cidrContains(v4, '10.1.2.3')).toBe(true);
    expect(cidrContains(v4, '::ffff:10.1.2.3')).toBe(true);
    expect(cidrContains(v4, '11.0.0.1')).toBe(false);
    const v6 = parseCidr('2001:db8::/32') as Cidr;
    expect(cidrContains(v6, '2001:db8:1::5')).toBe(true);
    expect(cidrContains(v6, '2001:db9::1')).toBe(false);
    expect(cidrContains(v6, '10.0.0.1')).toBe(false);
  });
  it('refuses host bits and suggests the network', () => {
    expect(parseCidr('192.0.2.7/24')).toBe('"192.0.2.7/24" has host bits set; did you mean 192.0.2.0/24?');
    expect(parseCidr('2001:db8::1/64')).toBe('"2001:db8::1/64" has host bits set; did you mean 2001:db8::/64?');
  });
  it('refuses garbage', () => {
    expect(parseCidr('foo/8')).toMatch(/not an IPv4 or IPv6 address/);
    expect(parseCidr('10.0.0.0/33')).toMatch(/from 0 to 32/);
  });
  it('formats and normalises', () => {
    expect(formatAddress(6, (parseCidr('fd00:1:2::10') as Cidr).network)).toBe('fd00:1:2::10');
    expect(normalizeAddress('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(normalizeAddress('::1')).toBe('::1');
  });
});
