// Pure prefix arithmetic on top of cidr.ts's parser: the network an interface address sits in, overlap of two prefixes, a spare host address.

import { addressToBigInt, type Cidr, formatAddress } from './cidr.js';

/** Address width in bits per family. */
export const FAMILY_BITS = { 4: 32, 6: 128 } as const;

/**
 * The prefix an address with this prefix length sits in (`10.9.1.1`, 24 → 10.9.1.0/24): an
 * interface address keeps its host bits, which parseCidr rightly refuses. undefined: not an address,
 * or the length is out of range for its family.
 */
export function networkOf(address: string, prefixlen: number): Cidr | undefined {
  const a = addressToBigInt(address);
  if (!a) return undefined;
  const bits = FAMILY_BITS[a.family];
  if (!Number.isInteger(prefixlen) || prefixlen < 0 || prefixlen > bits) return undefined;
  const host = BigInt(bits - prefixlen);
  const network = (a.value >> host) << host;
  return { family: a.family, network, prefix: prefixlen, text: `${formatAddress(a.family, network)}/${prefixlen}` };
}

/** Whether two prefixes share an address: same family, and the shorter one holds the other's network. */
export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false;
  const shift = BigInt(FAMILY_BITS[a.family] - Math.min(a.prefix, b.prefix));
  return a.network >> shift === b.network >> shift;
}

/**
 * An address of `cidr` not in `taken`, counting down from the last-but-one host (the top of a
 * subnet is the broadcast address in IPv4 and rarely a real host in either family); at most
 * `tries` candidates, never the network address. undefined when the prefix has fewer than two host
 * bits or every candidate is taken. `taken` holds canonical spellings (formatAddress).
 */
export function spareHost(cidr: Cidr, taken: ReadonlySet<string>, tries = 16): string | undefined {
  const hostBits = FAMILY_BITS[cidr.family] - cidr.prefix;
  if (hostBits < 2) return undefined;
  const top = cidr.network + (1n << BigInt(hostBits)) - 2n;
  for (let i = 0n; i < BigInt(tries) && top - i > cidr.network; i++) {
    const candidate = formatAddress(cidr.family, top - i);
    if (!taken.has(candidate)) return candidate;
  }
  return undefined;
}
