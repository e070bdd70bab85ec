// Connects to a chosen backend server, from etd's own address or from the client's (a pluggable SourceStrategy).

import net from 'node:net';
import { EtdError } from '../errors.js';
import type { SourceMode } from '../config/schema.js';
import { loadTransparent } from '../native/transparent.js';
import { proxyV1, proxyV2, type ProxyEndpoints } from './proxyHeader.js';

export interface UpstreamTarget {
  readonly address: string;
  readonly port: number;
}

/** Addresses of the accepted client connection (normalised: no ::ffff: prefix). */
export type ClientEndpoints = ProxyEndpoints;

/** How the upstream socket gets its source address. */
export interface SourceStrategy {
  readonly kind: SourceMode;
  /** Whether the chosen server must be of the client's address family. */
  readonly sameFamily: boolean;
  /** Resolves with a connected socket (headers already queued), or rejects with a coded cause. */
  connect(target: UpstreamTarget, client: ClientEndpoints, timeoutMs: number): Promise<net.Socket>;
  /** The same connection for the native engine to make; throws where connect would reject before connecting. */
  plan(target: UpstreamTarget, client: ClientEndpoints): NativePlan;
}

/** How the native engine makes the upstream connection (see docs/engine.md, engineConnect). */
export interface NativePlan {
  /** '' = etd's own address (the kernel chooses); otherwise the spoofed source (IP_TRANSPARENT). */
  readonly sourceAddress: string;
  /** TCP_SYNCNT for the spoofed socket (0 = the kernel's default). */
  readonly synCount: number;
  /** Bytes sent before anything else (a PROXY protocol header), possibly empty. */
  readonly preamble: Buffer;
}

const NO_PREAMBLE = Buffer.alloc(0);
const SELF_PLAN: NativePlan = { sourceAddress: '', synCount: 0, preamble: NO_PREAMBLE };

/** Why a connect failed, in the words of session summaries, health checks and the doctor. */
export type ConnectFailure = 'refused' | 'timeout' | 'unreachable' | 'reset' | 'no_privilege' | 'error';

/** Classifies a connect error by its errno name (the one place that does). */
export function connectFailure(e: unknown): ConnectFailure {
  // The native addon's errors carry the errno name in sysCode (their code is ETD_ERR_SYSCALL).
  const code = (e as { sysCode?: string } | undefined)?.sysCode ?? (e as { code?: string } | undefined)?.code;
  switch (code) {
    case 'ECONNREFUSED':
      return 'refused';
    case 'ETIMEDOUT':
      return 'timeout';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return 'unreachable';
    case 'ECONNRESET':
    case 'EPIPE':
      return 'reset';
    case 'EPERM':
    case 'EACCES':
      return 'no_privilege';
    default:
      return 'error';
  }
}

/** The session summary's word for a failed connect: the class, or the errno name when unclassified. */
export function connectFailureCause(e: unknown): string {
  const c = connectFailure(e);
  if (c !== 'error') return c;
  const code = (e as { sysCode?: string } | undefined)?.sysCode ?? (e as { code?: string } | undefined)?.code;
  return code ? code.toLowerCase() : 'error';
}

function timeoutError(target: UpstreamTarget, ms: number): Error {
  return Object.assign(new Error(`connect to ${target.address}:${target.port} timed out after ${ms}ms`), { code: 'ETIMEDOUT' });
}

/** Waits for 'connect' on a socket that is connecting, with one timer; destroys it on failure. */
function awaitConnect(socket: net.Socket, target: UpstreamTarget, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(timeoutError(target, timeoutMs));
    }, timeoutMs);
    const onError = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      resolve(socket);
    });
  });
}

/** From etd's own address (plain mode; the kernel picks the source). */
export class SelfSource implements SourceStrategy {
  readonly kind: SourceMode = 'self';
  readonly sameFamily = false;
  connect(target: UpstreamTarget, _client: ClientEndpoints, timeoutMs: number): Promise<net.Socket> {
    const socket = net.connect({ host: target.address, port: target.port, allowHalfOpen: true, noDelay: true });
    return awaitConnect(socket, target, timeoutMs);
  }
  plan(): NativePlan {
    return SELF_PLAN;
  }
}

/** From etd's own address, then a PROXY protocol header (v1 or v2) carrying the client's address. */
export class ProxyHeaderSource implements SourceStrategy {
  readonly sameFamily = false;
  private readonly inner = new SelfSource();
  constructor(readonly kind: 'proxy-v1' | 'proxy-v2') {}
  async connect(target: UpstreamTarget, client: ClientEndpoints, timeoutMs: number): Promise<net.Socket> {
    const socket = await this.inner.connect(target, client, timeoutMs);
    socket.write(this.header(client));
    return socket;
  }
  plan(_target: UpstreamTarget, client: ClientEndpoints): NativePlan {
    return { sourceAddress: '', synCount: 0, preamble: this.header(client) };
  }
  private header(client: ClientEndpoints): Buffer {
    return this.kind === 'proxy-v1' ? proxyV1(client) : proxyV2(client);
  }
}

/**
 * From the client's own address (IP_TRANSPARENT), like HAProxy's `usesrc clientip`.
 * Port 0 with IP_BIND_ADDRESS_NO_PORT: the kernel picks a port at connect time, avoiding a
 * conntrack collision with the client's own connection. A small TCP_SYNCNT keeps a missing
 * return route from hanging for minutes; the JS timeout still bounds the attempt.
 */
export class ClientIpSource implements SourceStrategy {
  readonly kind: SourceMode = 'clientip';
  readonly sameFamily = true;
  constructor(
    private readonly mark: number,
    private readonly synCount = 2,
  ) {}
  plan(target: UpstreamTarget, client: ClientEndpoints): NativePlan {
    this.checkFamily(target, client);
    return { sourceAddress: client.clientAddress, synCount: this.synCount, preamble: NO_PREAMBLE };
  }
  private checkFamily(target: UpstreamTarget, client: ClientEndpoints): 4 | 6 {
    const family = net.isIPv6(client.clientAddress) ? 6 : 4;
    if (net.isIP(target.address) !== family) {
      throw new EtdError('ETD_ERR_NO_SERVER', `server ${target.address} is not IPv${family} like client ${client.clientAddress}`);
    }
    return family;
  }
  connect(target: UpstreamTarget, client: ClientEndpoints, timeoutMs: number): Promise<net.Socket> {
    let family: 4 | 6;
    try {
      family = this.checkFamily(target, client);
    } catch (e) {
      return Promise.reject(e);
    }
    let fd: number;
    try {
      fd = loadTransparent().transparentSocket(family, client.clientAddress, this.mark, this.synCount);
    } catch (e) {
      return Promise.reject(e);
    }
    // From here Node owns the fd: it closes it when the socket is destroyed.
    const socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
    socket.setNoDelay(true);
    socket.connect({ host: target.address, port: target.port });
    return awaitConnect(socket, target, timeoutMs);
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
      // No SO_MARK: an outbound mark equal to the divert mark would loop the SYN back to etd.
      return new ClientIpSource(0);
  }
}
