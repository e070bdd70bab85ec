// One listening socket per configured listener; hands each accepted connection to a session (Node socket or native engine).

import net from 'node:net';
import type { Logger } from 'pino';
import type { ListenerConfig } from '../config/schema.js';
import { EtdError } from '../errors.js';
import { loadTransparent } from '../native/transparent.js';
import { loadEngine } from '../native/engine.js';
import type { EngineDriver, NativeAccept } from './engineDriver.js';
import type { SessionContext } from './session.js';

export interface AcceptHandler {
  (socket: net.Socket, ctx: SessionContext): void;
}

export interface NativeAcceptHandler {
  (conn: NativeAccept, ctx: SessionContext): void;
}

/** What the operator should do when a listen fails with this errno name (undefined: nothing specific). */
function listenHint(code: string | undefined): string | undefined {
  switch (code) {
    case 'EADDRINUSE':
      return 'another process holds that address and port; stop it or choose another port';
    case 'EACCES':
      return 'ports below 1024 need root or CAP_NET_BIND_SERVICE';
    case 'EADDRNOTAVAIL':
      return 'that address is not configured on this host; use one of its addresses or 0.0.0.0';
    default:
      return undefined;
  }
}

function errnoName(err: unknown): string | undefined {
  const e = err as { sysCode?: string; code?: string } | undefined;
  return e?.sysCode ?? e?.code;
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
  /** Native engine listeners: the engine's id for each bound fd, and what it is bound to. */
  private native: Array<{ id: number; address: string; port: number }> = [];
  readonly log: Logger;

  constructor(
    readonly config: ListenerConfig,
    readonly ctx: SessionContext,
    private readonly onAccept: AcceptHandler,
    private readonly tproxyPort: number,
    /** With the native engine (listeners[].engine: native): the driver and the accept handler. */
    private readonly engine?: { driver: EngineDriver; onAccept: NativeAcceptHandler },
  ) {
    this.log = ctx.log;
  }

  /** The addresses actually bound (port 0 resolved), for logs and tests. */
  addresses(): Array<{ address: string; port: number }> {
    if (this.native.length) return this.native.map(({ address, port }) => ({ address, port }));
    return this.servers.map((s) => s.address()).filter((a): a is net.AddressInfo => !!a && typeof a === 'object');
  }

  async start(): Promise<void> {
    if (this.engine) this.startNative(this.engine.driver, this.engine.onAccept);
    else await this.startNode();
    this.log.info({ addresses: this.addresses().map((a) => fmt(a.address, a.port)), mode: this.config.mode, engine: this.engine ? 'native' : 'node' }, 'listening');
  }

  /** Binds each address natively and hands the fd to the engine; all or nothing. */
  private startNative(driver: EngineDriver, onAccept: NativeAcceptHandler): void {
    const engine = loadEngine();
    const ctx = this.ctx;
    const log = this.log;
    const name = this.config.name;
    try {
      for (const b of bindAddresses(this.config, this.tproxyPort)) {
        const family = net.isIPv6(b.address) ? 6 : 4;
        let fd: number;
        try {
          fd = b.transparent
            ? loadTransparent().transparentListener(family, b.address, b.port, this.config.backlog)
            : engine.plainListener(family, b.address, b.port, this.config.backlog, false);
        } catch (err) {
          throw new EtdError('ETD_ERR_LISTEN', `listener ${name}: cannot listen on ${fmt(b.address, b.port)}: ${errnoName(err) ?? (err as Error).message}`, {
            // The addon's own message already says what to do (e.g. the capability an EPERM needs).
            hint: listenHint(errnoName(err)) ?? (err as Error).message,
            cause: err,
          });
        }
        let bound: [string, number];
        let id: number;
        try {
          bound = engine.sockName(fd);
          id = driver.listen(fd, {
            accepted: (conn) => onAccept(conn, ctx),
            // After a successful listen, errors (e.g. EMFILE on accept) are logged; the engine keeps accepting.
            failed: (syscall, code) => log.error({ syscall, code, listener: name }, `listener error: ${syscall} ${code}`),
          });
        } catch (err) {
          loadTransparent().closeFd(fd);
          throw err;
        }
        this.native.push({ id, address: bound[0], port: bound[1] });
      }
    } catch (err) {
      this.stopNative();
      throw err;
    }
  }

  private stopNative(): void {
    for (const n of this.native) this.engine?.driver.unlisten(n.id);
    this.native = [];
  }

  private async startNode(): Promise<void> {
    for (const b of bindAddresses(this.config, this.tproxyPort)) {
      const server = net.createServer({ allowHalfOpen: true, noDelay: true });
      server.on('connection', (socket) => this.onAccept(socket, this.ctx));
      await new Promise<void>((resolve, reject) => {
        const fail = (err: NodeJS.ErrnoException) => {
          reject(
            new EtdError('ETD_ERR_LISTEN', `listener ${this.config.name}: cannot listen on ${fmt(b.address, b.port)}: ${err.code ?? err.message}`, {
              hint: listenHint(err.code) ?? 'check the listener address and port',
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
  }

  /** Stops accepting; existing connections are not touched. */
  async stop(): Promise<void> {
    this.stopNative();
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
