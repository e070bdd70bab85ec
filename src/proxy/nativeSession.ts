// One client connection run by the native engine: the decisions (window, server, retries, verdict, summary) of a Session, the I/O in the addon.
//
// The engine holds the connection, reads early talk, connects, checks the greeting and relays
// (docs/engine.md); this object only answers its events and writes the one summary line. It
// keeps no socket, buffer or timer, so a held connection costs a few hundred bytes of JS.

import type { Server } from '../backend/pool.js';
import { Attempts } from './attempts.js';
import type { EngineDriver, EngineSession, NativeAccept } from './engineDriver.js';
import { connectFailureCause } from './upstream.js';
import type { Verdict } from './verdict.js';
import { nextSessionId, summaryOf, type LiveSession, type Phase, type SessionContext, type SessionPolicy } from './session.js';

/** The summary's cause for an upstream failure reported by the engine (the Node engine's words). */
export function upstreamFailureCause(stage: 'connect' | 'greeting', code: string): string {
  if (stage === 'connect') return connectFailureCause({ code });
  if (code === 'EOF') return 'server_closed_before_greeting';
  if (code === 'ETIMEDOUT') return 'server_greeting_timeout';
  return `server_${connectFailureCause({ code })}_before_greeting`;
}

export class NativeSession implements LiveSession, EngineSession {
  readonly id = nextSessionId();
  readonly started = performance.now();
  readonly startedAt = Date.now();
  readonly policy: SessionPolicy;
  readonly family: 4 | 6;
  readonly clientAddress: string;
  readonly clientPort: number;
  phase: Phase = 'held';
  relayed = false;
  /** Final counts (from the engine's last event); while the session lives, the getters ask the engine. */
  private finalFrom = 0;
  private finalTo = 0;
  private readonly eid: number;
  private readonly profile: number;
  private attempts: Attempts | undefined;
  private heldMs = 0;
  private talkedAfterMs: number | undefined;
  private evidence: Buffer | undefined;
  private greeting: string | undefined;
  private connectMs: number | undefined;

  constructor(
    private readonly engine: EngineDriver,
    private readonly conn: NativeAccept,
    readonly ctx: SessionContext,
    readonly skipped?: 'allowlist' | 'pass_cache',
  ) {
    this.policy = ctx.policy;
    this.eid = conn.eid;
    this.family = conn.family;
    this.clientAddress = conn.peerAddress;
    this.clientPort = conn.peerPort;
    this.profile = engine.profile(this.policy);
  }

  get server(): Server | undefined {
    return this.attempts?.server;
  }
  get bytesFromClient(): number {
    return this.done ? this.finalFrom : (this.engine.addon.engineBytes(this.eid)?.[0] ?? this.finalFrom);
  }
  get bytesToClient(): number {
    return this.done ? this.finalTo : (this.engine.addon.engineBytes(this.eid)?.[1] ?? this.finalTo);
  }
  get ageMs(): number {
    return performance.now() - this.started;
  }
  get talked(): boolean {
    return this.talkedAfterMs !== undefined;
  }
  get done(): boolean {
    return this.phase === 'closing' || this.phase === 'closed';
  }

  /** Starts the window (or connects at once: allow list, pass cache, zero window). */
  begin(): void {
    this.engine.attach(this.eid, this);
    this.ctx.sessionStarted(this);
    if (!this.skipped && this.policy.windowMs > 0) this.engine.addon.engineHold(this.eid, this.policy.windowMs, this.profile);
    else this.connectNext();
  }

  talkedEarly(afterMs: number, evidence: Buffer, bytes: number): void {
    if (this.done) return;
    this.talkedAfterMs = Math.round(afterMs * 100) / 100;
    this.evidence = evidence;
    this.finalFrom = bytes;
    this.endHold();
    this.finish('early_talker', this.policy.action === 'reject' ? 'rejected' : 'dropped');
  }

  gone(cause: string): void {
    if (this.done) return;
    this.endHold();
    this.finish('client_gone', cause);
  }

  expired(heldMs: number): void {
    if (this.done) return;
    this.heldMs = heldMs;
    this.connectNext();
  }

  upstreamFailed(stage: 'connect' | 'greeting', code: string): void {
    if (this.done || !this.attempts) return;
    if (stage === 'greeting') this.attempts.connected();
    this.retryOrGiveUp(upstreamFailureCause(stage, code), undefined);
  }

  greeted(code: string, connectMs: number, relaying: boolean): void {
    if (this.done || !this.attempts) return;
    this.connectMs = Math.round(connectMs * 100) / 100;
    this.greeting = code;
    this.attempts.connected();
    if (relaying) {
      this.phase = 'relaying';
      this.relayed = true;
      this.ctx.sessionRelaying(this);
      return;
    }
    // The backend refused (or is not SMTP): another server may take the client; if none can,
    // the client gets this backend's own refusal.
    const cause = `server_greeting_${code}`;
    if (this.attempts.failed(cause, undefined)) {
      this.connectNext();
      return;
    }
    this.finish('passed', cause);
    this.engine.addon.engineReplyGreeting(this.eid);
  }

  ended(cause: string, bytesFromClient: number, bytesToClient: number): void {
    this.finalFrom = bytesFromClient;
    this.finalTo = bytesToClient;
    this.finish('passed', cause);
  }

  shutdown(): void {
    if (this.phase !== 'held') return;
    this.endHold();
    this.finish('shutdown', 'shutdown');
    this.engine.addon.engineReply(this.eid, '421 4.3.2 Service shutting down, try again later\r\n');
  }

  abort(cause: string): void {
    if (this.done) return;
    if (!this.relayed) this.endHold();
    this.finish(this.relayed ? 'passed' : 'shutdown', cause);
    this.engine.addon.engineClose(this.eid, cause);
  }

  private endHold(): void {
    if (this.phase === 'held') this.heldMs = performance.now() - this.started;
  }

  private connectNext(): void {
    const a = (this.attempts ??= this.newAttempts());
    this.phase = 'connecting';
    // A synchronous failure (no privilege, wrong family, an immediate refusal) is a failed attempt like any other.
    for (;;) {
      const target = a.next();
      if ('noServer' in target) {
        this.noServer(target.noServer);
        return;
      }
      try {
        const plan = this.ctx.source.plan(target, {
          clientAddress: this.clientAddress,
          clientPort: this.clientPort,
          localAddress: this.conn.localAddress,
          localPort: this.conn.localPort,
        });
        const family = target.address.includes(':') ? 6 : 4;
        this.engine.addon.engineConnect(
          this.eid,
          this.profile,
          family,
          plan.sourceAddress,
          plan.synCount,
          target.address,
          target.port,
          this.policy.connectTimeoutMs,
          plan.preamble,
        );
        return;
      } catch (err) {
        if (!a.failed(connectFailureCause(err), err)) {
          this.noServer(a.lastFailure ?? 'connect_failed');
          return;
        }
      }
    }
  }

  /** Created at the first attempt: a session that never gets there (early talk, hang-up) needs none. */
  private newAttempts(): Attempts {
    // Intercept mode: the accepted connection's local end is the address the client dialled.
    return new Attempts(this.ctx, this.policy, this.family, () => ({ address: this.conn.localAddress, port: this.conn.localPort }));
  }

  private retryOrGiveUp(cause: string, err: unknown): void {
    const a = this.attempts!;
    if (a.failed(cause, err)) this.connectNext();
    else this.noServer(a.lastFailure ?? cause);
  }

  /** No backend could take the session: tell the client to come back later. */
  private noServer(cause: string): void {
    this.finish('no_server', cause);
    this.engine.addon.engineReply(this.eid, `${this.policy.noServerReply}\r\n`);
  }

  private finish(verdict: Verdict, cause: string): void {
    if (this.done) return;
    if (this.relayed && verdict === 'passed') {
      // Ended by us (abort) rather than by the engine's END: take the counts while the engine still has them.
      const live = this.engine.addon.engineBytes(this.eid);
      if (live) [this.finalFrom, this.finalTo] = live;
    }
    this.phase = 'closed';
    this.engine.detach(this.eid);
    this.attempts?.release();
    const summary = summaryOf({
      id: this.id,
      listener: this.ctx.listener,
      clientAddress: this.clientAddress,
      clientPort: this.clientPort,
      verdict,
      cause,
      action: this.policy.action,
      talkedAfterMs: this.talkedAfterMs,
      evidence: this.evidence,
      attempts: this.attempts,
      greeting: this.greeting,
      connectMs: this.connectMs,
      skipped: this.skipped,
      heldMs: this.heldMs,
      started: this.started,
      bytesFromClient: this.finalFrom,
      bytesToClient: this.finalTo,
    });
    this.ctx.sessionEnded(this, summary);
  }
}
