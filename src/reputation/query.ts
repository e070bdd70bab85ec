// Pure: the DNS name to query for a client in a DNSBL zone (reversed IPv4 octets, reversed IPv6 nibbles).

import { addressToBigInt, normalizeAddress } from '../config/cidr.js';

/**
 * `192.0.2.1` in `zen.example` → `1.2.0.192.zen.example`; `2001:db8::1` → 32 reversed nibbles
 * (`1.0.0.0.…8.b.d.0.1.0.0.2.zen.example`). An IPv4-mapped IPv6 address is looked up as IPv4.
 * Undefined for something that is not an address.
 */
export function queryName(address: string, zone: string): string | undefined {
  const parsed = addressToBigInt(normalizeAddress(address));
  if (!parsed) return undefined;
  const z = zone.replace(/\.$/, '');
  if (parsed.family === 4) {
    const v = parsed.value;
    return `${v & 0xffn}.${(v >> 8n) & 0xffn}.${(v >> 16n) & 0xffn}.${(v >> 24n) & 0xffn}.${z}`;
  }
  const hex = parsed.value.toString(16).padStart(32, '0');
  return `${[...hex].reverse().join('.')}.${z}`;
}
