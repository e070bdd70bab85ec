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

export interface AcceptHandler {
  (conn: NativeAccept, ctx: SessionContext): void;
}

/** Where a listener binds: plain/vip bind the configured address; intercept binds the TPROXY target. */
export function bindAddresses(config: ListenerConfig, tproxyPort: number): Array<{ address: string; port: number; transparent: boolean; freebind: boolean }> {
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

export class Listener {
  /** The engine's id for each bound fd, and what it is bound to. */
  private bound: Array<{ id: number; address: string; port: number }> = [];
  readonly log: Logger;

  constructor(
    readonly config: ListenerConfig,
    readonly ctx: SessionContext,
    private readonly driver: EngineDriver,
    private readonly onAccept: AcceptHandler,
    private readonly tproxyPort: number,
  ) {
    this.log = ctx.log;
  }

  /** The addresses actually bound (port 0 resolved), for logs and tests. */
  addresses(): Array<{ address: string; port: number }> {
    return this.bound.map(({ address, port }) => ({ address, port }));
  }

  /** Binds each address and hands the fd to the engine; all or nothing. */
  async start(): Promise<void> {
    try {
      for (const b of bindAddresses(this.config, this.tproxyPort)) this.bound.push(this.bind(b));
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.log.info({ addresses: this.addresses().map((a) => hostPort(a.address, a.port)), mode: this.config.mode }, 'listening');
  }

  private bind(b: { address: string; port: number; transparent: boolean; freebind: boolean }): { id: number; address: string; port: number } {
    const sockets = loadTransparent();
    const family = net.isIPv6(b.address) ? 6 : 4;
    let fd: number;
    try {
      fd = b.transparent
        ? sockets.transparentListener(family, b.address, b.port, this.config.backlog)
        : sockets.plainListener({ family, address: b.address, port: b.port, backlog: this.config.backlog, v6only: false, freebind: b.freebind });
    } catch (err) {
      const code = errnoName(err);
      throw new EtdError('ETD_ERR_LISTEN', `listener ${this.config.name}: cannot listen on ${hostPort(b.address, b.port)}: ${code ?? (err as Error).message}`, {
        // The addon's own message already says what to do (e.g. the capability an EPERM needs).
        hint:
          code === 'EADDRNOTAVAIL' && this.config.mode !== 'intercept'
            ? `${listenHint(code, 'listeners[].port')}; for a VIP that keepalived moves between gateways, set listeners[].freebind: true (docs/ha.md)`
            : (listenHint(code, `listeners[].port`) ?? (err as Error).message),
        cause: err,
      });
    }
    try {
      const [address, port] = sockets.sockName(fd);
      const ctx = this.ctx;
      const id = this.driver.listen(fd, {
        accepted: (conn) => this.onAccept(conn, ctx),
        // After a successful listen, errors (e.g. EMFILE on accept) are logged; the engine keeps accepting.
        failed: (syscall, code) => this.log.error({ syscall, code }, `listener error: ${syscall} ${code}`),
      });
      return { id, address, port };
    } catch (err) {
      sockets.closeFd(fd);
      throw err;
    }
  }

  /** Stops accepting; existing connections are not touched. */
  async stop(): Promise<void> {
    for (const b of this.bound) this.driver.unlisten(b.id);
    this.bound = [];
  }
}
