// One session's upstream attempts: which server next, whether to retry, why the last one failed.

import type { Server } from '../backend/pool.js';
import type { SessionContext, SessionPolicy } from './protocol.js';
import type { UpstreamTarget } from './upstream.js';

/** The summary's `cause` when no attempt could be made or the last one failed. */
export type NoTarget = { readonly noServer: string };

export class Attempts {
  /** Attempts made so far (connects started). */
  count = 0;
  /** The server of the current (or last) attempt; undefined in intercept mode (original destination). */
  server: Server | undefined;
  target: UpstreamTarget | undefined;
  lastFailure: string | undefined;
  /** What the operator should check, when the failures point at something specific. */
  hint: string | undefined;
  private tried: Set<Server> | undefined;
  /** Whether `server.active` counts this session now (so it is decremented exactly once). */
  private counted = false;
  /** The attempt whose connect was credited to its server (once each: early talk during the greeting, then the greeting). */
  private credited = 0;

  constructor(
    private readonly ctx: SessionContext,
    private readonly policy: SessionPolicy,
    private readonly family: 4 | 6,
    /** Intercept mode: the address the client dialled. */
    private readonly original: () => UpstreamTarget,
  ) {}

  /** Chooses the next target and counts it against its server, or says why there is none. */
  next(): UpstreamTarget | NoTarget {
    const sameFamily = this.ctx.source.sameFamily;
    let target: UpstreamTarget;
    if (this.policy.forward === 'original') {
      target = this.original();
      this.server = undefined;
    } else {
      const server = this.ctx.pool.pick(sameFamily ? this.family : undefined, this.tried);
      if (!server) {
        if (this.count === 0 && sameFamily && !this.ctx.pool.hasFamily(this.family)) {
          this.hint = `no IPv${this.family} server is configured; clientip needs a server of the client's family`;
        }
        return { noServer: this.count === 0 ? 'no_server_up' : (this.lastFailure ?? 'connect_failed') };
      }
      (this.tried ??= new Set()).add(server);
      this.server = server;
      server.took();
      this.counted = true;
      target = { address: server.config.address, port: server.config.port };
    }
    this.target = target;
    this.count++;
    return target;
  }

  /** The connect succeeded (the greeting may still fail). */
  connected(): void {
    if (this.credited === this.count) return;
    this.credited = this.count;
    if (this.server) this.ctx.pool.connectSucceeded(this.server);
  }

  /** The attempt failed (connect or greeting); counts it against the server. Returns whether to try again. */
  failed(cause: string, err: unknown): boolean {
    if (this.server) {
      this.release();
      this.ctx.pool.connectFailed(this.server, cause);
    }
    this.lastFailure = cause.startsWith('server_') ? cause : `connect_${cause}`;
    if (cause === 'timeout' && this.ctx.source.kind === 'clientip') {
      this.hint =
        'the spoofed connect got no answer: the return traffic is probably not routed through etd ' +
        '(backend default route or PBR, the divert rule, or the fwmark ip rule is missing; run etd doctor)';
    } else if (cause === 'no_privilege') {
      this.hint =
        'etd lacks CAP_NET_ADMIN for IP_TRANSPARENT; run it under the systemd unit, or start it as root (it keeps CAP_NET_ADMIN when it drops to its user)';
    } else if (err instanceof Error && !['timeout', 'refused', 'unreachable', 'reset'].includes(cause)) {
      this.hint = err.message;
    }
    return this.canRetry();
  }

  /** The session is done with its server (ended, or abandoned while connecting). Idempotent. */
  release(): void {
    if (this.counted && this.server) this.server.released();
    this.counted = false;
  }

  /** Whether another attempt is allowed: retries left, and (pool mode) a server not tried yet. */
  canRetry(): boolean {
    if (this.count > this.policy.retries) return false;
    if (this.policy.forward === 'original') return this.count < 2;
    return this.ctx.pool.hasCandidate(this.ctx.source.sameFamily ? this.family : undefined, this.tried);
  }
}
