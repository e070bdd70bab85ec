// One configured listener: binds its address(es) natively and hands each fd to the engine, whose accepted connections go to the App.

import net from 'node:net';
import type { Logger } from 'pino';
import type { ListenerConfig } from '../config/schema.js';
import { EtdError } from '../errors.js';
import { loadTransparent } from '../native/transparent.js';
import { hostPort } from '../util/address.js';
import { errnoName, listenHint } from '../util/errno.js';
import type { EngineDriver, NativeAccept } from './engineDriver.js';
import type { SessionContext } from './protocol.js';

export type AcceptHandler = (conn: NativeAccept, ctx: SessionContext) => void;

/** Where a listener binds: plain/vip bind the configured address; intercept binds the TPROXY target. */
export function bindAddresses(
  config: ListenerConfig,
  tproxyPort: number,
): Array<{ address: string; port: number; transparent: boolean; freebind: boolean }> {
  if (config.mode === 'intercept') {
    return [
      { address: '127.0.0.1', port: tproxyPort, transparent: true, freebind: false },
      { address: '::1', port: tproxyPort, transparent: true, freebind: false },
    ];
  }
  // vip: clients dial etd's own address, so the listener itself needs no IP_TRANSPARENT — and must
  // not have it: a transparent wildcard listener would grab all port-25 traffic routed through.
  // freebind: an HA pair's standby listens on the VIP before keepalived moves it here (docs/ha.md).
  return [{ address: config.address, port: config.port, transparent: false, freebind: config.freebind }];
}

/** A listening socket: its fd and what it is bound to (port 0 resolved). */
export interface BoundFd {
  readonly fd: number;
  readonly address: string;
  readonly port: number;
}

/**
 * Binds a listener's addresses: `copies` sockets per address, one per engine thread, with
 * SO_REUSEPORT when there are several (the first resolves port 0, the others bind that port).
 * All or nothing: on failure every fd bound so far is closed. Returns the sockets by copy.
 */
export function bindListener(config: ListenerConfig, tproxyPort: number, copies = 1, reusePort = copies > 1): BoundFd[][] {
  const sockets = loadTransparent();
  const out: BoundFd[][] = Array.from({ length: copies }, () => []);
  try {
    for (const b of bindAddresses(config, tproxyPort)) {
      let port = b.port;
      for (let i = 0; i < copies; i++) {
        const bound = bindOne(config, { ...b, port }, reusePort);
        out[i]!.push(bound);
        port = bound.port;
      }
    }
  } catch (err) {
    for (const fds of out) for (const b of fds) sockets.closeFd(b.fd);
    throw err;
  }
  return out;
}

function bindOne(
  config: ListenerConfig,
  b: { address: string; port: number; transparent: boolean; freebind: boolean },
  reusePort: boolean,
): BoundFd {
  const sockets = loadTransparent();
  const family = net.isIPv6(b.address) ? 6 : 4;
  let fd: number;
  try {
    fd = b.transparent
      ? sockets.transparentListener(family, b.address, b.port, config.backlog, { reusePort })
      : sockets.plainListener({
          family,
          address: b.address,
          port: b.port,
          backlog: config.backlog,
          v6only: false,
          freebind: b.freebind,
          reusePort,
        });
  } catch (err) {
    const code = errnoName(err);
    throw new EtdError(
      'ETD_ERR_LISTEN',
      `listener ${config.name}: cannot listen on ${hostPort(b.address, b.port)}: ${code ?? (err as Error).message}`,
      {
        // The addon's own message already says what to do (e.g. the capability an EPERM needs).
        hint:
          code === 'EADDRNOTAVAIL' && config.mode !== 'intercept'
            ? `${listenHint(code, 'listeners[].port')}; for a VIP that keepalived moves between gateways, set listeners[].freebind: true (docs/ha.md)`
            : (listenHint(code, `listeners[].port`) ?? (err as Error).message),
        cause: err,
      },
    );
  }
  try {
    const [address, port] = sockets.sockName(fd);
    return { fd, address, port };
  } catch (err) {
    sockets.closeFd(fd);
    throw err;
  }
}

export class Listener {
  /** The engine's id for each bound fd, its thread, and what it is bound to. */
  private bound: Array<{ id: number; thread: number; address: string; port: number }> = [];
  private stopped = false;
  readonly log: Logger;

  constructor(
    readonly config: ListenerConfig,
    readonly ctx: SessionContext,
    private readonly driver: EngineDriver,
    private readonly onAccept: AcceptHandler,
    private readonly tproxyPort: number,
    /** Engine threads: one SO_REUSEPORT socket per address for each (the kernel spreads the connections). */
    private readonly threads = 1,
  ) {
    this.log = ctx.log;
  }

  /** The addresses actually bound (port 0 resolved), for logs and tests: thread 0's (the others share them). */
  addresses(): Array<{ address: string; port: number }> {
    return this.bound.filter((b) => b.thread === 0).map(({ address, port }) => ({ address, port }));
  }

  /** Binds each address once per engine thread and hands the fds to the threads; all or nothing. */
  async start(): Promise<void> {
    const copies = bindListener(this.config, this.tproxyPort, this.threads);
    const fds = copies.flatMap((list, thread) => list.map((b) => ({ b, thread })));
    let i = 0;
    try {
      for (; i < fds.length; i++) this.bound.push(this.attach(fds[i]!.b, fds[i]!.thread));
    } catch (err) {
      const sockets = loadTransparent();
      for (; i < fds.length; i++) sockets.closeFd(fds[i]!.b.fd);
      await this.stop();
      throw err;
    }
    this.log.info(
      { addresses: this.addresses().map((a) => hostPort(a.address, a.port)), mode: this.config.mode, threads: this.threads },
      'listening',
    );
  }

  private attach(b: BoundFd, thread: number): { id: number; thread: number; address: string; port: number } {
    const ctx = this.ctx;
    const id = this.driver.listen(
      b.fd,
      {
        accepted: (conn) => this.onAccept(conn, ctx),
        // After a successful listen, errors (e.g. EMFILE on accept) are logged; the engine keeps accepting.
        failed: (syscall, code) => this.log.error({ syscall, code, thread }, `listener error: ${syscall} ${code}`),
        restore: (t) => this.restore(t),
      },
      thread,
    );
    return { id, thread, address: b.address, port: b.port };
  }

  /** Engine thread `thread` died (its sockets with it) and runs again: its sockets are bound afresh on the same ports. */
  private restore(thread: number): void {
    if (this.stopped) return;
    const mine = this.bound.filter((b) => b.thread === thread);
    const others = this.bound.filter((b) => b.thread !== thread);
    const port = (mine[0] ?? others[0])?.port ?? this.config.port;
    const config = this.config.mode === 'intercept' ? this.config : { ...this.config, port };
    const fresh = bindListener(config, this.tproxyPort, 1, this.threads > 1)[0]!;
    const attached = [];
    try {
      for (const b of fresh) attached.push(this.attach(b, thread));
    } catch (err) {
      for (const a of attached) this.driver.unlisten(a.id);
      const sockets = loadTransparent();
      for (const b of fresh.slice(attached.length)) sockets.closeFd(b.fd);
      throw err;
    }
    this.bound = [...others, ...attached];
  }

  /** Stops accepting; existing connections are not touched. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const b of this.bound) this.driver.unlisten(b.id);
    this.bound = [];
  }
}
