// One client connection: hold → verdict → upstream connect → greeting → relay → one summary line.

import net from 'node:net';
import type { Logger } from 'pino';
import type { Mode } from '../config/schema.js';
import { normalizeAddress } from '../config/cidr.js';
import type { Pool, Server } from '../backend/pool.js';
import type { HoldQueue, HoldTicket, Holdable } from './holdQueue.js';
import type { SourceStrategy, UpstreamTarget, ClientEndpoints } from './upstream.js';
import { connectFailureCause } from './upstream.js';
import { Attempts } from './attempts.js';
import { Relay, type RelayOwner } from './relay.js';
import { earlyTalkAction, escapeBytes, findGreetingEnd, replyCode, type Verdict } from './verdict.js';

/** The part of the config a session works by; captured when the connection arrives. */
export interface SessionPolicy {
  readonly windowMs: number;
  readonly action: 'drop' | 'reject' | 'log';
  readonly rejectReply: string;
  readonly noServerReply: string;
  readonly connectTimeoutMs: number;
  readonly retries: number;
  readonly clientIdleMs: number;
  readonly serverIdleMs: number;
  readonly forward: 'pool' | 'original';
  readonly stripPipeconnect: boolean;
  /** First line of a multi-line greeting sent before the window ("220-mx ESMTP"), or undefined. */
  readonly teaser: string | undefined;
}

export type Phase = 'held' | 'connecting' | 'greeting' | 'relaying' | 'closing' | 'closed';

/** The operator's tcplog: one per session, logged once when the session ends. */
export interface SessionSummary {
  readonly id: number;
  readonly listener: string;
  readonly client: string;
  readonly clientAddress: string;
  readonly verdict: Verdict;
  readonly action?: string;
  readonly talkedAfterMs?: number;
  readonly earlyBytes?: string;
  readonly server?: string;
  readonly serverAddress?: string;
  readonly greeting?: string;
  /** Why the window was skipped: allow list or pass cache. */
  readonly skipped?: string;
  readonly connectMs?: number;
  readonly attempts: number;
  readonly heldMs: number;
  readonly durationMs: number;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
  readonly cause: string;
  readonly hint?: string;
}

/** What a session knows when it ends; `summaryOf` turns it into the summary line (both engines). */
export interface SummaryFacts {
  readonly id: number;
  readonly listener: string;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly verdict: Verdict;
  readonly cause: string;
  readonly action: string;
  readonly talkedAfterMs: number | undefined;
  readonly evidence: Buffer | undefined;
  /** Undefined when no attempt was made (early talk or hang-up in the window). */
  readonly attempts: Attempts | undefined;
  readonly greeting: string | undefined;
  readonly connectMs: number | undefined;
  readonly skipped: string | undefined;
  readonly heldMs: number;
  readonly started: number;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
}

function hostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** The one summary line of a session (the operator's tcplog); optional fields only when they apply. */
export function summaryOf(f: SummaryFacts): SessionSummary {
  const a = f.attempts;
  return {
    id: f.id,
    listener: f.listener,
    client: hostPort(f.clientAddress, f.clientPort),
    clientAddress: f.clientAddress,
    verdict: f.verdict,
    ...(f.talkedAfterMs !== undefined
      ? { action: f.action, talkedAfterMs: f.talkedAfterMs, earlyBytes: escapeBytes(f.evidence ?? Buffer.alloc(0)) }
      : {}),
    ...(a?.target ? { server: a.server?.name ?? 'original', serverAddress: hostPort(a.target.address, a.target.port) } : {}),
    ...(f.greeting ? { greeting: f.greeting } : {}),
    ...(f.connectMs !== undefined ? { connectMs: f.connectMs } : {}),
    ...(f.skipped ? { skipped: f.skipped } : {}),
    attempts: a?.count ?? 0,
    heldMs: Math.round(f.heldMs),
    durationMs: Math.round(performance.now() - f.started),
    bytesFromClient: f.bytesFromClient,
    bytesToClient: f.bytesToClient,
    cause: f.cause,
    ...(a?.hint ? { hint: a.hint } : {}),
  };
}

/** What the API, the stats and shutdown need of a live session, whichever engine runs it. */
export interface LiveSession {
  readonly id: number;
  readonly ctx: SessionContext;
  readonly family: 4 | 6;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly phase: Phase;
  readonly server: Server | undefined;
  readonly startedAt: number;
  readonly ageMs: number;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
  /** Whether the client sent anything before the greeting. */
  readonly talked: boolean;
  /** Why the window was skipped (allow list, pass cache), if it was. */
  readonly skipped?: 'allowlist' | 'pass_cache' | undefined;
  /** True once the greeting was complete and the relay started. */
  readonly relayed: boolean;
  /** Held at shutdown: a polite 421; relayed sessions are left to finish. */
  shutdown(): void;
  /** Grace time is over: end the session whatever it is doing. */
  abort(cause: string): void;
}

/** Who a session reports to: the listener's shared context. */
export interface SessionContext {
  readonly listener: string;
  readonly mode: Mode;
  readonly log: Logger;
  readonly pool: Pool;
  readonly hold: HoldQueue<Session>;
  source: SourceStrategy;
  /** The policy for a connection arriving now (normal or stress). */
  readonly policy: SessionPolicy;
  sessionStarted(s: LiveSession): void;
  sessionRelaying(s: LiveSession): void;
  sessionEnded(s: LiveSession, summary: SessionSummary): void;
}

/** Early-talk bytes kept for the log line; more are counted but not kept. */
const EVIDENCE_BYTES = 100;
/** With action: log, client bytes buffered before the greeting; past this the client is paused. */
const PENDING_LIMIT = 64 * 1024;
/** How long a client may take to read a final reply (554/421) before it is cut off. */
const REPLY_LINGER_MS = 5_000;
/** After a teaser, how long etd waits for the client's first command to answer it with a refusal. */
const DEFERRED_REPLY_WAIT_MS = 30_000;

const kSession = Symbol('etd.session');
type SessionSocket = net.Socket & { [kSession]?: Session };

// Handlers shared by every session (no per-connection closures on the hold path).
function onClientData(this: SessionSocket, chunk: Buffer): void {
  this[kSession]?.clientData(chunk);
}
function onClientEnd(this: SessionSocket): void {
  this[kSession]?.clientGone('client_closed');
}
function onClientError(this: SessionSocket, err: NodeJS.ErrnoException): void {
  this[kSession]?.clientGone(err.code === 'ECONNRESET' ? 'client_reset' : `client_${(err.code ?? 'error').toLowerCase()}`);
}
function onClientClose(this: SessionSocket): void {
  this[kSession]?.clientGone('client_closed');
}
function onLingerTimeout(this: net.Socket): void {
  this.destroy();
}
function onUpstreamData(this: SessionSocket, chunk: Buffer): void {
  this[kSession]?.upstreamGreeting(chunk);
}
function onUpstreamEnd(this: SessionSocket): void {
  this[kSession]?.upstreamLost('server_closed_before_greeting');
}
function onUpstreamError(this: SessionSocket, err: NodeJS.ErrnoException): void {
  this[kSession]?.upstreamLost(`server_${connectFailureCause(err)}_before_greeting`);
}
function onUpstreamTimeout(this: SessionSocket): void {
  this[kSession]?.upstreamLost('server_greeting_timeout');
}
function noop(): void {}

const kDeferred = Symbol('etd.deferredReply');
type DeferredSocket = net.Socket & { [kDeferred]?: Buffer };
// After "220 …" completed a teaser: the first command line gets the stored refusal, then close.
function onDeferredData(this: DeferredSocket, chunk: Buffer): void {
  const reply = this[kDeferred];
  if (!reply || chunk.indexOf(0x0a) < 0) return;
  this[kDeferred] = undefined;
  this.removeListener('data', onDeferredData);
  this.end(reply);
  this.setTimeout(REPLY_LINGER_MS, onLingerTimeout);
}

let nextId = 1;
/** Session ids grow in arrival order across both engines (the API pages by them). */
export function nextSessionId(): number {
  return nextId++;
}

export class Session implements Holdable, RelayOwner, LiveSession {
  readonly id = nextSessionId();
  readonly started = performance.now();
  readonly startedAt = Date.now();
  readonly policy: SessionPolicy;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly family: 4 | 6;
  phase: Phase = 'held';
  /** True once the greeting was complete and the relay started. */
  relayed = false;
  verdict: Verdict | undefined;

  private ticket: HoldTicket | undefined;
  private heldMs = 0;
  private talkedAfterMs: number | undefined;
  private evidence: Buffer | undefined;
  private pending: Buffer[] | undefined;
  private pendingBytes = 0;
  private upstream: SessionSocket | undefined;
  private relay: Relay | undefined;
  private readonly attempts: Attempts;
  private connectStarted = 0;
  private connectMs: number | undefined;
  private greetingCarry = '';
  private greetingBytes = 0;
  private greeting: string | undefined;
  private teaserSent = false;
  /** The backend's greeting, collected whole to check its code before the client sees any of it. */
  private greetingChunks: Buffer[] | undefined;

  constructor(
    readonly client: SessionSocket,
    readonly ctx: SessionContext,
    /** Why the window is skipped (allow list, pass cache), if it is. */
    readonly skipped?: 'allowlist' | 'pass_cache',
  ) {
    this.policy = ctx.policy;
    this.clientAddress = normalizeAddress(client.remoteAddress ?? '');
    this.clientPort = client.remotePort ?? 0;
    this.family = net.isIPv6(this.clientAddress) ? 6 : 4;
    // Intercept mode: the accepted socket's local end is the address the client dialled.
    this.attempts = new Attempts(ctx, this.policy, this.family, () => ({
      address: normalizeAddress(this.client.localAddress ?? ''),
      port: this.client.localPort ?? 25,
    }));
    client[kSession] = this;
    client.on('data', onClientData);
    client.on('end', onClientEnd);
    client.on('error', onClientError);
    client.on('close', onClientClose);
  }

  /** Starts the window (or connects at once when the window is zero). */
  begin(): void {
    this.ctx.sessionStarted(this);
    if (this.skipped) {
      // A known-good client: no teaser, no window — connect now, zero added delay.
      this.onHoldExpired();
      return;
    }
    if (this.policy.teaser !== undefined) {
      // Bait: bots answer the first line of a multi-line greeting; RFC 5321 clients wait for the last.
      this.client.write(`${this.policy.teaser}\r\n`);
      this.teaserSent = true;
    }
    if (this.policy.windowMs > 0) this.ticket = this.ctx.hold.add(this, this.policy.windowMs);
    else this.onHoldExpired();
  }

  get server(): Server | undefined {
    return this.attempts.server;
  }

  get done(): boolean {
    return this.phase === 'closing' || this.phase === 'closed';
  }

  get bytesFromClient(): number {
    return this.client.bytesRead;
  }
  get bytesToClient(): number {
    return this.client.bytesWritten;
  }
  /** Whether the client sent anything before the greeting. */
  get talked(): boolean {
    return this.talkedAfterMs !== undefined;
  }
  get ageMs(): number {
    return performance.now() - this.started;
  }

  /** Client bytes before relaying: every one of them is early talk. */
  clientData(chunk: Buffer): void {
    if (this.done || this.phase === 'relaying') return;
    if (this.talkedAfterMs === undefined) {
      this.talkedAfterMs = Math.round((performance.now() - this.started) * 100) / 100;
      this.evidence = chunk.subarray(0, EVIDENCE_BYTES);
    } else if (this.evidence && this.evidence.length < EVIDENCE_BYTES) {
      this.evidence = Buffer.concat([this.evidence, chunk.subarray(0, EVIDENCE_BYTES - this.evidence.length)]);
    }
    const action = earlyTalkAction(this.policy.action);
    if (action === 'drop') {
      this.endHold();
      this.finish('early_talker', 'dropped');
      this.client.resetAndDestroy();
    } else if (action === 'reject') {
      this.endHold();
      this.finish('early_talker', 'rejected');
      this.replyAndClose(this.policy.rejectReply);
    } else {
      // action: log — remember the bytes and deliver them after the greeting.
      (this.pending ??= []).push(chunk);
      this.pendingBytes += chunk.length;
      if (this.pendingBytes >= PENDING_LIMIT) this.client.pause();
    }
  }

  /** The client hung up (FIN, RST or close) before the relay started. */
  clientGone(cause: string): void {
    if (this.done || this.phase === 'relaying') return;
    this.endHold();
    this.finish('client_gone', cause);
    this.client.destroy();
  }

  onHoldExpired(): void {
    this.ticket = undefined;
    if (this.done) return;
    this.heldMs = performance.now() - this.started;
    this.phase = 'connecting';
    this.connectNext();
  }

  private endHold(): void {
    if (this.ticket) {
      this.ctx.hold.cancel(this.ticket);
      this.ticket = undefined;
      this.heldMs = performance.now() - this.started;
    }
  }

  private connectNext(): void {
    const target = this.attempts.next();
    if ('noServer' in target) {
      this.noServer(target.noServer);
      return;
    }
    this.connectStarted = performance.now();
    this.ctx.source.connect(target, this.endpoints(), this.policy.connectTimeoutMs).then(
      (socket) => this.upstreamConnected(socket),
      (err: unknown) => this.attemptFailed(connectFailureCause(err), err),
    );
  }

  endpoints(): ClientEndpoints {
    return {
      clientAddress: this.clientAddress,
      clientPort: this.clientPort,
      localAddress: normalizeAddress(this.client.localAddress ?? ''),
      localPort: this.client.localPort ?? 0,
    };
  }

  private upstreamConnected(socket: net.Socket): void {
    if (this.done) {
      // The client went away while we were connecting.
      socket.destroy();
      this.attempts.release();
      return;
    }
    this.connectMs = Math.round((performance.now() - this.connectStarted) * 100) / 100;
    this.attempts.connected();
    const up = socket as SessionSocket;
    up[kSession] = this;
    up.on('data', onUpstreamData);
    up.on('end', onUpstreamEnd);
    up.on('error', onUpstreamError);
    up.on('timeout', onUpstreamTimeout);
    up.setTimeout(this.policy.serverIdleMs);
    this.upstream = up;
    this.phase = 'greeting';
  }

  /** A connect or greeting failed: count it against the server, then retry or give up with 421. */
  private attemptFailed(cause: string, err: unknown): void {
    const retry = this.attempts.failed(cause, err);
    if (this.done) return;
    this.phase = 'connecting';
    if (retry) this.connectNext();
    else this.noServer(this.attempts.lastFailure ?? cause);
  }

  /**
   * Backend bytes until its greeting is complete. The greeting is collected whole (it is one
   * short reply) so its code can be checked before the client sees any of it: a backend that
   * greets with 421/554 or garbage is a failed attempt, and another server may take the client.
   */
  upstreamGreeting(chunk: Buffer): void {
    if (this.done) return;
    this.greetingBytes += chunk.length;
    const { end, carry } = findGreetingEnd(this.greetingCarry, chunk);
    this.greetingCarry = carry;
    (this.greetingChunks ??= []).push(chunk);
    if (end < 0) return;
    const whole = this.greetingChunks.length === 1 ? chunk : Buffer.concat(this.greetingChunks);
    this.greetingChunks = undefined;
    const firstLine = whole.toString('latin1', 0, Math.min(whole.length, 200)).split(/\r?\n/)[0] ?? '';
    this.greeting = replyCode(firstLine) ?? 'garbage';
    if (this.greeting === '220') {
      this.client.write(whole);
      this.startRelay();
      return;
    }
    // The backend refused (or is not SMTP): let it go politely, then try another server.
    const up = this.upstream!;
    this.detachUpstream(up);
    up.end('QUIT\r\n');
    up.setTimeout(REPLY_LINGER_MS, onLingerTimeout);
    this.upstream = undefined;
    const cause = `server_greeting_${this.greeting}`;
    if (this.attempts.failed(cause, undefined)) {
      this.phase = 'connecting';
      this.connectNext();
      return;
    }
    // No other server: the client gets this backend's own refusal. After a "220-" teaser a
    // reply's lines must share one code, so 220 completes the greeting and the refusal
    // answers the client's first command instead.
    this.finish('passed', cause);
    if (this.teaserSent) this.deferredReply(whole);
    else {
      this.client.end(whole);
      this.client.setTimeout(REPLY_LINGER_MS, onLingerTimeout);
    }
  }

  /** The backend went away (or stayed silent) before completing its greeting: a failed attempt. */
  upstreamLost(cause: string): void {
    if (this.done || this.phase !== 'greeting') return;
    const up = this.upstream!;
    this.detachUpstream(up);
    up.destroy();
    this.upstream = undefined;
    this.greetingChunks = undefined;
    this.greetingCarry = '';
    this.attemptFailed(cause, undefined);
  }

  private detachUpstream(up: SessionSocket): void {
    up.removeListener('data', onUpstreamData);
    up.removeListener('end', onUpstreamEnd);
    up.removeListener('error', onUpstreamError);
    up.removeListener('timeout', onUpstreamTimeout);
    up.on('error', noop);
    delete up[kSession];
  }

  private startRelay(): void {
    const up = this.upstream!;
    this.detachUpstream(up);
    const c = this.client;
    c.removeListener('data', onClientData);
    c.removeListener('end', onClientEnd);
    c.removeListener('error', onClientError);
    c.removeListener('close', onClientClose);
    delete c[kSession];
    this.phase = 'relaying';
    this.relayed = true;
    this.verdict = 'passed';
    this.ctx.sessionRelaying(this);
    this.relay = new Relay(c, up, this.policy.clientIdleMs, this.policy.serverIdleMs, this);
    this.relay.start(this.pending, this.policy.stripPipeconnect);
    this.pending = undefined;
  }

  onRelayEnd(cause: string): void {
    this.attempts.release();
    this.relay = undefined;
    this.finish('passed', cause);
  }

  /** No backend could take the session: tell the client to come back later. */
  private noServer(cause: string): void {
    this.finish('no_server', cause);
    if (this.teaserSent) this.deferredReply(Buffer.from(`${this.policy.noServerReply}\r\n`, 'latin1'));
    else this.replyAndClose(this.policy.noServerReply);
  }

  /** Completes the teaser with a final 220 line, then answers the client's first command with `reply` and closes. */
  private deferredReply(reply: Buffer): void {
    const c = this.client as DeferredSocket;
    if (c.destroyed) return;
    c.removeListener('data', onClientData);
    delete (c as SessionSocket)[kSession];
    c[kDeferred] = reply;
    c.on('data', onDeferredData);
    c.resume();
    c.write(`220 ${this.policy.teaser!.slice(4)}\r\n`);
    c.setTimeout(DEFERRED_REPLY_WAIT_MS, onLingerTimeout);
  }

  /** Held at shutdown: a polite 421 so the client retries later; relayed sessions are left to finish. */
  shutdown(): void {
    if (this.phase === 'held') {
      this.endHold();
      this.finish('shutdown', 'shutdown');
      this.replyAndClose('421 4.3.2 Service shutting down, try again later');
    }
  }

  /** Grace time is over: end the session whatever it is doing. */
  abort(cause: string): void {
    if (this.relay) {
      this.relay.abort(cause);
      return;
    }
    if (this.done) {
      this.client.destroy();
      return;
    }
    this.endHold();
    this.finish(this.verdict ?? 'shutdown', cause);
    this.client.destroy();
  }

  private replyAndClose(reply: string): void {
    const c = this.client;
    if (c.destroyed) return;
    // Keep reading (and discarding) so unread input does not turn our close into a RST that
    // could overtake the reply.
    c.resume();
    c.end(`${reply}\r\n`);
    c.setTimeout(REPLY_LINGER_MS, onLingerTimeout);
  }

  private finish(verdict: Verdict, cause: string): void {
    if (this.done) return;
    this.phase = 'closing';
    this.verdict = verdict;
    if (this.upstream && verdict !== 'passed') {
      this.detachUpstream(this.upstream);
      this.upstream.destroy();
      this.upstream = undefined;
    }
    // Ended (also while connecting or before the greeting): the server no longer carries it.
    this.attempts.release();
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
      bytesFromClient: this.client.bytesRead,
      bytesToClient: this.client.bytesWritten,
    });
    this.phase = 'closed';
    this.ctx.sessionEnded(this, summary);
  }
}
