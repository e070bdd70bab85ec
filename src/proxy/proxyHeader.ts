// Pure encoders of the PROXY protocol header (v1 text, v2 binary) that carries the client's address upstream.

import net from 'node:net';
import { addressToBigInt } from '../config/cidr.js';

export interface ProxyEndpoints {
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly localAddress: string;
  readonly localPort: number;
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function sameFamily(e: ProxyEndpoints): 4 | 6 | undefined {
  const a = net.isIP(e.clientAddress);
  const b = net.isIP(e.localAddress);
  return a === b && (a === 4 || a === 6) ? a : undefined;
}

/** "PROXY TCP4 src dst sport dport\r\n"; "PROXY UNKNOWN\r\n" when the families differ. */
export function proxyV1(e: ProxyEndpoints): Buffer {
  const fam = sameFamily(e);
  if (!fam) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  return Buffer.from(`PROXY TCP${fam} ${e.clientAddress} ${e.localAddress} ${e.clientPort} ${e.localPort}\r\n`, 'latin1');
}

function addressBytes(address: string, family: 4 | 6): Buffer {
  const v = addressToBigInt(address)!.value;
  const len = family === 4 ? 4 : 16;
  const out = Buffer.alloc(len);
  for (let i = 0; i < len; i++) out[len - 1 - i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return out;
}

/** Binary v2 header, command PROXY, TCP over IPv4 or IPv6; LOCAL when the families differ. */
export function proxyV2(e: ProxyEndpoints): Buffer {
  const fam = sameFamily(e);
  if (!fam) return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  const addrLen = fam === 4 ? 12 : 36;
  const head = Buffer.from([0x21, fam === 4 ? 0x11 : 0x21, addrLen >> 8, addrLen & 0xff]);
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(e.clientPort, 0);
  ports.writeUInt16BE(e.localPort, 2);
  return Buffer.concat([V2_SIGNATURE, head, addressBytes(e.clientAddress, fam), addressBytes(e.localAddress, fam), ports]);
}
