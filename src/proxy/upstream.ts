// How the upstream connection gets its source address: from etd, from etd plus a PROXY header, or from the client's own address (a pluggable SourceStrategy).

import net from 'node:net';
import type { SourceMode } from '../config/schema.js';
import { EtdError } from '../errors.js';
import { type ProxyEndpoints, proxyV1, proxyV2 } from './proxyHeader.js';

export interface UpstreamTarget {
  readonly address: string;
  readonly port: number;
}

/** Addresses of the accepted client connection (normalised: no ::ffff: prefix). */
export type ClientEndpoints = ProxyEndpoints;

/** How the engine makes the upstream connection (docs/engine.md, connect). */
export interface UpstreamPlan {
  /** '' = etd's own address (the kernel chooses); otherwise the spoofed source (IP_TRANSPARENT). */
  readonly sourceAddress: string;
  /** TCP_SYNCNT for the spoofed socket (0 = the kernel's default). */
  readonly synCount: number;
  /** Bytes sent before anything else (a PROXY protocol header), possibly empty. */
  readonly preamble: Buffer;
}

/** How the upstream socket gets its source address. */
export interface SourceStrategy {
  readonly kind: SourceMode;
  /** Whether the chosen server must be of the client's address family. */
  readonly sameFamily: boolean;
  /** The connection for the engine to make; throws (ETD_ERR_NO_SERVER) when this server cannot take this client. */
  plan(target: UpstreamTarget, client: ClientEndpoints): UpstreamPlan;
}

const NO_PREAMBLE = Buffer.alloc(0);
const SELF_PLAN: UpstreamPlan = { sourceAddress: '', synCount: 0, preamble: NO_PREAMBLE };

/** From etd's own address (plain mode; the kernel picks the source). */
export class SelfSource implements SourceStrategy {
  readonly kind: SourceMode = 'self';
  readonly sameFamily = false;
  plan(): UpstreamPlan {
    return SELF_PLAN;
  }
}

/** From etd's own address, then a PROXY protocol header (v1 or v2) carrying the client's address. */
export class ProxyHeaderSource implements SourceStrategy {
  readonly sameFamily = false;
  constructor(readonly kind: 'proxy-v1' | 'proxy-v2') {}
  plan(_target: UpstreamTarget, client: ClientEndpoints): UpstreamPlan {
    return { sourceAddress: '', synCount: 0, preamble: this.kind === 'proxy-v1' ? proxyV1(client) : proxyV2(client) };
  }
}

/**
 * From the client's own address (IP_TRANSPARENT), like HAProxy's `usesrc clientip`. The engine
 * binds (client address, port 0) with IP_BIND_ADDRESS_NO_PORT — never the client's own port (a
 * conntrack collision) — and never sets SO_MARK (an outbound mark equal to the divert mark would
 * loop the SYN back to etd). A small TCP_SYNCNT keeps a missing return route from hanging for
 * minutes; the connect timeout still bounds the attempt.
 */
export class ClientIpSource implements SourceStrategy {
  readonly kind: SourceMode = 'clientip';
  readonly sameFamily = true;
  constructor(private readonly synCount = 2) {}
  plan(target: UpstreamTarget, client: ClientEndpoints): UpstreamPlan {
    const family = net.isIPv6(client.clientAddress) ? 6 : 4;
    if (net.isIP(target.address) !== family) {
      throw new EtdError('ETD_ERR_NO_SERVER', `server ${target.address} is not IPv${family} like client ${client.clientAddress}`);
    }
    return { sourceAddress: client.clientAddress, synCount: this.synCount, preamble: NO_PREAMBLE };
  }
}

export function createSource(kind: SourceMode): SourceStrategy {
  switch (kind) {
    case 'self':
      return new SelfSource();
    case 'proxy-v1':
    case 'proxy-v2':
      return new ProxyHeaderSource(kind);
    case 'clientip':
      return new ClientIpSource();
  }
}
