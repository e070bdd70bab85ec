// PROXY protocol headers, checked byte by byte against the spec's layout.

import { describe, expect, it } from 'vitest';
import { proxyV1, proxyV2 } from '../../src/proxy/proxyHeader.js';

describe('PROXY protocol', () => {
  it('v1 for IPv4 and IPv6', () => {
    expect(proxyV1({ clientAddress: '192.0.2.1', clientPort: 5678, localAddress: '198.51.100.2', localPort: 25 }).toString()).toBe(
      'PROXY TCP4 192.0.2.1 198.51.100.2 5678 25\r\n',
    );
    expect(proxyV1({ clientAddress: '2001:db8::1', clientPort: 1, localAddress: '2001:db8::2', localPort: 25 }).toString()).toBe(
      'PROXY TCP6 2001:db8::1 2001:db8::2 1 25\r\n',
    );
  });
  it('v2 for IPv4', () => {
    const h = proxyV2({ clientAddress: '192.0.2.1', clientPort: 5678, localAddress: '198.51.100.2', localPort: 25 });
    expect(h.subarray(0, 12).toString('hex')).toBe('0d0a0d0a000d0a515549540a');
    expect(h[12]).toBe(0x21);
    expect(h[13]).toBe(0x11);
    expect(h.readUInt16BE(14)).toBe(12);
    expect([...h.subarray(16, 20)]).toEqual([192, 0, 2, 1]);
    expect([...h.subarray(20, 24)]).toEqual([198, 51, 100, 2]);
    expect(h.readUInt16BE(24)).toBe(5678);
    expect(h.readUInt16BE(26)).toBe(25);
    expect(h.length).toBe(28);
  });
  it('v2 for IPv6', () => {
    const h = proxyV2({ clientAddress: '2001:db8::1', clientPort: 1, localAddress: '::1', localPort: 25 });
    expect(h[13]).toBe(0x21);
    expect(h.readUInt16BE(14)).toBe(36);
    expect(h.subarray(16, 32).toString('hex')).toBe('20010db8000000000000000000000001');
    expect(h.length).toBe(16 + 36);
  });
  it('v2 LOCAL when the families differ', () => {
    const h = proxyV2({ clientAddress: '192.0.2.1', clientPort: 1, localAddress: '::1', localPort: 25 });
    expect(h[12]).toBe(0x20);
    expect(h.length).toBe(16);
  });
});
