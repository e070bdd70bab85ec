// CIDR parsing and matching, IPv4 and IPv6, with host-bit errors that suggest the fix.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  addressToBigInt,
  type Cidr,
  canonicalCidr,
  cidrContains,
  formatAddress,
  normalizeAddress,
  parseAddress,
  parseCidr,
} from '../../src/config/cidr.js';

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

describe('the one address/CIDR parser at the borders', () => {
  it('refuses zone IDs with the fix, and other malformed forms, without throwing', () => {
    expect(parseCidr('fe80::%x/64')).toMatch(/has a zone ID \("%x"\); etd matches addresses without one: write fe80::/);
    expect(parseCidr('::%a/128')).toMatch(/zone ID/);
    expect(parseAddress('fe80::1%eth0')).toBe('"fe80::1%eth0" has a zone ID ("%eth0"); etd matches addresses without one: write fe80::1');
    expect(addressToBigInt('fe80::1%eth0')).toBeUndefined();
    for (const bad of [
      '1.2.3',
      '01.2.3.4',
      '0x7f.0.0.1',
      ' 1.2.3.4',
      '1.2.3.4\n',
      '::1/',
      '::1/-1',
      '::1/1e2',
      '10.0.0.0/8/8',
      '',
      '/8',
      'x'.repeat(1000),
    ]) {
      expect(typeof parseCidr(bad), bad).toBe('string');
    }
  });
  it('IPv4-mapped prefixes are IPv4 ones; "::1.2.3.4" is not mapped', () => {
    expect(parseCidr('::ffff:192.0.2.0/120')).toMatchObject({ family: 4, prefix: 24, network: 0xc0000200n });
    expect(parseCidr('::ffff:10.0.0.0/8')).toMatch(/shorter than \/96/);
    expect(parseAddress('::ffff:c000:201')).toEqual({ family: 4, value: 0xc0000201n });
    expect(parseAddress('::1.2.3.4')).toEqual({ family: 6, value: 0x01020304n });
  });
  it('fuzz: any string gives a prefix or an error string, never a throw', () => {
    const chars = fc.constantFrom(...'0123456789abcdefABCDEF:./%x '.split(''));
    const addressish = fc.array(chars, { maxLength: 50 }).map((a) => a.join(''));
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 80 }), addressish, fc.string({ unit: 'binary', maxLength: 30 })), (s) => {
        const c = parseCidr(s);
        const a = parseAddress(s);
        expect(['string', 'object']).toContain(typeof c);
        expect(['string', 'object']).toContain(typeof a);
        addressToBigInt(s);
        if (typeof c === 'object')
          expect(parseCidr(canonicalCidr(c))).toMatchObject({ family: c.family, network: c.network, prefix: c.prefix });
      }),
      { numRuns: 20_000 },
    );
  });
  it('fuzz: canonical forms round-trip', () => {
    const v4 = fc
      .tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 32 }))
      .map(([v, p]) => ({ family: 4 as const, value: BigInt(v), prefix: p }));
    const v6 = fc
      .tuple(fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }), fc.integer({ min: 0, max: 128 }))
      .map(([v, p]) => ({ family: 6 as const, value: v, prefix: p }));
    fc.assert(
      fc.property(fc.oneof(v4, v6), ({ family, value, prefix }) => {
        const bits = family === 4 ? 32 : 128;
        const network = (value >> BigInt(bits - prefix)) << BigInt(bits - prefix);
        if (family === 6 && network >> 32n === 0xffffn) return; // IPv4-mapped: an IPv4 prefix, tested above
        const text = `${formatAddress(family, network)}/${prefix}`;
        expect(parseCidr(text)).toEqual({ family, network, prefix, text });
        const host = parseAddress(formatAddress(family, value));
        if (family === 4 || value >> 32n !== 0xffffn) expect(host).toEqual({ family, value });
      }),
      { numRuns: 20_000 },
    );
  });
});
