// One listening socket per configured listener; hands each accepted connection to a Session.

import net from 'node:net';
import type { Logger } from 'pino';
import type { ListenerConfig } from '../config/schema.js';
import { EtdError } from '../errors.js';
import { loadTransparent } from '../native/transparent.js';
import type { SessionContext } from './session.js';

export interface AcceptHandler {
  (socket: net.Socket, ctx: SessionContext): void;
}

/** Where a listener binds: plain/vip bind the configured address; intercept binds the TPROXY target. */
export function bindAddresses(config: ListenerConfig, tproxyPort: number): Array<{ address: string; port: number; transparent: boolean }> {
  if (config.mode === 'intercept') {
    return [
      { address: '127.0.0.1', port: tproxyPort, transparent: true },
      { address: '::1', port: tproxyPort, transparent: true },
    ];
  }
  // vip: clients dial etd's own address, so the listener itself needs no IP_TRANSPARENT — and must
  // not have it: a transparent wildcard listener would grab all port-25 traffic routed through.
  return [{ address: config.address, port: config.port, transparent: false }];
}

export class Listener {
  private servers: net.Server[] = [];
  readonly log: Logger;

  constructor(
    readonly config: ListenerConfig,
    readonly ctx: SessionContext,
    private readonly onAccept: AcceptHandler,
    private readonly tproxyPort: number,
  ) {
    this.log = ctx.log;
  }

  /** The addresses actually bound (port 0 resolved), for logs and tests. */
  addresses(): Array<{ address: string; port: number }> {
    return this.servers.map((s) => s.address()).filter((a): a is net.AddressInfo => !!a && typeof a === 'object');
  }

  async start(): Promise<void> {
    for (const b of bindAddresses(this.config, this.tproxyPort)) {
      const server = net.createServer({ allowHalfOpen: true, noDelay: true });
      server.on('connection', (socket) => this.onAccept(socket, this.ctx));
      await new Promise<void>((resolve, reject) => {
        const fail = (err: NodeJS.ErrnoException) => {
          reject(
            new EtdError('ETD_ERR_LISTEN', `listener ${this.config.name}: cannot listen on ${fmt(b.address, b.port)}: ${err.code ?? err.message}`, {
              hint:
                err.code === 'EADDRINUSE'
                  ? 'another process holds that address and port; stop it or choose another port'
                  : err.code === 'EACCES'
                    ? 'ports below 1024 need root or CAP_NET_BIND_SERVICE'
                    : err.code === 'EADDRNOTAVAIL'
                      ? 'that address is not configured on this host; use one of its addresses or 0.0.0.0'
                      : 'check the listener address and port',
              cause: err,
            }),
          );
        };
        server.once('error', fail);
        const done = () => {
          server.removeListener('error', fail);
          // After a successful listen, errors (e.g. EMFILE on accept) are logged; Node keeps accepting.
          server.on('error', (err) => this.log.error({ err }, 'listener error'));
          resolve();
        };
        if (b.transparent) {
          let fd: number;
          try {
            fd = loadTransparent().transparentListener(net.isIPv6(b.address) ? 6 : 4, b.address, b.port, this.config.backlog);
          } catch (e) {
            reject(e);
            return;
          }
          // listen({ fd, backlog }) would ignore the backlog (511); the positional form applies it.
          server.listen({ fd }, this.config.backlog, done);
        } else {
          server.listen({ host: b.address, port: b.port, backlog: this.config.backlog, ipv6Only: false }, done);
        }
      });
      this.servers.push(server);
    }
    this.log.info({ addresses: this.addresses().map((a) => fmt(a.address, a.port)), mode: this.config.mode }, 'listening');
  }

  /** Stops accepting; existing connections are not touched. */
  async stop(): Promise<void> {
    const servers = this.servers;
    this.servers = [];
    // close() frees the port at once but its callback waits for every connection to end;
    // relayed sessions are not ours to wait for here.
    for (const s of servers) s.close();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

export function fmt(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}
