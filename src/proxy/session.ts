// THE session state machine: one client connection on the native engine, from hold to relay, answered event by event; one summary line.
//
// The engine (native/src, docs/engine.md) holds the connection, reads early talk, connects,
// checks the greeting and relays; this object decides (window, server, retries, verdict) and
// keeps no socket, buffer or timer, so a held connection costs a few hundred bytes of JS.
//
//   held ──EXPIRED──▶ connecting ──GREETING 220──▶ relaying ──END──▶ closed
//     │                 │  ▲ UPSTREAM_FAILED / refused greeting: next server, or 421 (no_server)
//     └─TALK / GONE─────┴──┴──▶ closed (early_talker, client_gone)
//
// Every failure path ends the session (finish), so its admission slot is always given back.

import type { Server } from '../backend/pool.js';
import { hostPort } from '../util/address.js';
import { connectFailureCause } from '../util/errno.js';
import { escapeBytes } from '../util/escapeBytes.js';
import { Attempts } from './attempts.js';
import type { EngineDriver, EngineSession, NativeAccept } from './engineDriver.js';
import type {
  LiveSession,
  LiveSessionView,
  Phase,
  ProtocolAction,
  ProtocolTest,
  SessionContext,
  SessionPolicy,
  SessionReputation,
  SessionSummary,
  TalkStage,
  Verdict,
} from './protocol.js';
import { earlyTalkCause, engineEndVerdict, protocolActionOf, upstreamFailureCause } from './verdict.js';

let nextId = 1;
/** Session ids grow in arrival order (the API pages by them); a connection answered at accept takes one too. */
export function nextSessionId(): number {
  return nextId++;
}

/** A live session as the API lists it. */
export function viewOfSession(s: LiveSession): LiveSessionView {
  return {
    id: s.id,
    listener: s.ctx.listener,
    clientAddress: s.clientAddress,
    clientPort: s.clientPort,
    phase: s.phase,
    server: s.server?.name,
    startedAt: s.startedAt,
    ageMs: s.ageMs,
    bytesFromClient: s.bytesFromClient,
    bytesToClient: s.bytesToClient,
  };
}

/** The reply to a held client when etd stops. */
/** How long a session whose command the engine refused waits for the event that explains it (it comes within a drain, ≈ µs). */
const LOST_GRACE_MS = 1000;

export const SHUTDOWN_REPLY = '421 4.3.2 Service shutting down, try again later';

/** What a session knows when it ends; `summaryOf` turns it into the summary line. */
export interface SummaryFacts {
  readonly id: number;
  readonly listener: string;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly verdict: Verdict;
  readonly cause: string;
  readonly action?: string;
  readonly talkedAfterMs?: number;
  readonly talkedDuring?: TalkStage;
  readonly evidence?: Buffer;
  /** A protocol test caught the client during the relay. */
  readonly protocol?: ProtocolCatch;
  /** Undefined when no attempt was made (early talk or hang-up in the window, answered at accept). */
  readonly attempts?: Attempts;
  readonly greeting?: string;
  readonly connectMs?: number;
  readonly skipped?: string;
  /** The window ended early, decided during the hold (an allowlisting score, a cluster peer's pass). */
  readonly released?: string;
  /** What the DNSBL/DNSWL lookups said, when they counted for this session. */
  readonly reputation?: SessionReputation;
  readonly heldMs: number;
  /** performance.now() at accept; undefined for a connection answered at once. */
  readonly started?: number;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
}

/** What a protocol test caught: the test, what was done, the offending line's first bytes. */
export interface ProtocolCatch {
  readonly test: ProtocolTest;
  readonly action: Exclude<ProtocolAction, 'ignore'>;
  readonly evidence: Buffer;
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
      ? {
          action: f.action,
          talkedAfterMs: f.talkedAfterMs,
          talkedDuring: f.talkedDuring,
          earlyBytes: escapeBytes(f.evidence ?? Buffer.alloc(0)),
        }
      : {}),
    ...(f.protocol
      ? { protocolTest: f.protocol.test, protocolAction: f.protocol.action, protocolBytes: escapeBytes(f.protocol.evidence) }
      : {}),
    ...(a?.target ? { server: a.server?.name ?? 'original', serverAddress: hostPort(a.target.address, a.target.port) } : {}),
    ...(f.greeting ? { greeting: f.greeting } : {}),
    ...(f.connectMs !== undefined ? { connectMs: f.connectMs } : {}),
    ...(f.skipped ? { skipped: f.skipped } : {}),
    ...(f.released ? { released: f.released } : {}),
    ...(f.reputation?.lists.length ? { score: f.reputation.score, lists: f.reputation.lists } : {}),
    ...(f.reputation?.allowlisted ? { allowlisted: true as const } : {}),
    attempts: a?.count ?? 0,
    heldMs: Math.round(f.heldMs),
    durationMs: f.started === undefined ? 0 : Math.round(performance.now() - f.started),
    bytesFromClient: f.bytesFromClient,
    bytesToClient: f.bytesToClient,
    cause: f.cause,
    ...(a?.hint ? { hint: a.hint } : {}),
  };
}

const round2 = (ms: number) => Math.round(ms * 100) / 100;

/** What only a session that got past the silent hold has: kept apart so a held session stays small. */
interface Outcome {
  talkedAfterMs?: number;
  talkedDuring?: TalkStage;
  evidence?: Buffer;
  protocol?: ProtocolCatch;
  greeting?: string;
  connectMs?: number;
  released?: string;
  reputation?: SessionReputation;
  /** A peer's pass that waits for the lookups. */
  vouched?: string;
}

/**
 * Strings of the accepted connection's local end: one per distinct address, shared by every
 * session (in vip and plain mode it is the same address for all of them).
 */
const localAddresses = new Map<string, string>();
function shared(address: string): string {
  const known = localAddresses.get(address);
  if (known !== undefined) return known;
  if (localAddresses.size < 1024) localAddresses.set(address, address);
  return address;
}

export class Session implements LiveSession, EngineSession {
  // Every held connection has one of these, so its fields are few (docs/performance.md, held
  // memory): what only later states need lives in `outcome`, created when first needed.
  readonly id = nextSessionId();
  readonly started = performance.now();
  readonly policy: SessionPolicy;
  readonly clientAddress: string;
  readonly clientPort: number;
  /** The accepted connection's local end: in intercept mode, the address the client dialled. */
  private readonly localAddress: string;
  private readonly localPort: number;
  relayed = false;
  private state: Phase = 'held';
  /** Counts from the engine's last word (TALK, END, or read at the end); while live, the getters ask the engine. */
  private finalFrom = 0;
  private finalTo = 0;
  private readonly eid: number;
  private readonly profile: number;
  private attempts: Attempts | undefined;
  private heldMs = 0;
  private outcome: Outcome | undefined;
  /** The teaser went out: a refusal must complete the greeting first (deferred reply). */
  private teased = false;
  /** Set when the engine refused a command (lost()): the fallback end if no event explains it. */
  private lostTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly engine: EngineDriver,
    conn: NativeAccept,
    readonly ctx: SessionContext,
    readonly skipped?: 'allowlist' | 'pass_cache',
  ) {
    this.policy = ctx.policy;
    this.eid = conn.eid;
    this.clientAddress = conn.peerAddress;
    this.clientPort = conn.peerPort;
    this.localAddress = shared(conn.localAddress);
    this.localPort = conn.localPort;
    this.profile = engine.profile(this.policy.profile);
  }

  get family(): 4 | 6 {
    return this.clientAddress.includes(':') ? 6 : 4;
  }
  /** Wall-clock time of the accept (derived: a held session keeps one clock reading, not two). */
  get startedAt(): number {
    return performance.timeOrigin + this.started;
  }

  /** `greeting` while the engine reads the backend's greeting (asked only when someone looks). */
  get phase(): Phase {
    if (this.state === 'connecting' && this.engine.engine.inspect(this.eid)?.state === 'greeting') return 'greeting';
    return this.state;
  }
  get server(): Server | undefined {
    return this.attempts?.server;
  }
  get bytesFromClient(): number {
    return this.done ? this.finalFrom : (this.engine.engine.inspect(this.eid)?.bytesFromClient ?? this.finalFrom);
  }
  get bytesToClient(): number {
    return this.done ? this.finalTo : (this.engine.engine.inspect(this.eid)?.bytesToClient ?? this.finalTo);
  }
  get ageMs(): number {
    return performance.now() - this.started;
  }
  get talked(): boolean {
    return this.outcome?.talkedAfterMs !== undefined;
  }
  get done(): boolean {
    return this.state === 'closed';
  }
  get released(): string | undefined {
    return this.outcome?.released;
  }

  /** What the DNSBL/DNSWL lookups said of the client, for the summary line (src/reputation). */
  noteReputation(r: SessionReputation): void {
    (this.outcome ??= {}).reputation = r;
  }
  /** Whether a score was noted (the lookups settled, or the cache knew it). */
  get scored(): boolean {
    return this.outcome?.reputation !== undefined;
  }
  /** A peer vouched for the client while its lookups ran (src/reputation/gate.ts `vouching`): released when they settle. */
  get vouched(): string | undefined {
    return this.outcome?.vouched;
  }
  vouch(reason: string): void {
    (this.outcome ??= {}).vouched = reason;
  }

  /**
   * Starts the window (or connects at once: allow list, pass cache, zero window). Called right
   * after admission: whatever throws here ends the session, so no slot is kept by a ghost.
   * `holdMs` holds this long instead, even a client that skips the window (a returning sender
   * whose lookups are still out is held only as long as they may take).
   */
  begin(holdMs?: number): void {
    this.engine.attach(this.eid, this);
    this.ctx.sessionStarted(this);
    try {
      const windowMs = holdMs ?? (this.skipped ? 0 : this.policy.windowMs);
      if (windowMs > 0) {
        if (!this.engine.engine.hold(this.eid, { windowMs, profile: this.profile })) this.lost();
        else this.teased = this.policy.teaser !== undefined;
      } else this.connectNext();
    } catch (err) {
      this.engineFailed(err);
    }
  }

  talkedEarly(afterMs: number, evidence: Buffer, bytes: number, stage: TalkStage, bytesToClient: number): void {
    if (this.done || this.talked) return;
    const o = (this.outcome ??= {});
    o.talkedAfterMs = round2(afterMs);
    o.talkedDuring = stage;
    o.evidence = evidence;
    this.finalFrom = bytes;
    // The teaser: a dropped connection is gone before finish() could ask the engine.
    this.finalTo = Math.max(this.finalTo, bytesToClient);
    // The connect had succeeded: the server did its part, whatever the client does.
    if (stage === 'greeting') this.attempts?.connected();
    this.endHold();
    // action log: recorded; the engine keeps holding and forwards the bytes after the greeting.
    if (this.policy.action === 'log') return;
    this.finish('early_talker', earlyTalkCause(this.policy.action));
  }

  /** True while the client is silently held (the window runs): `release` and `refuse` act only then. */
  get holding(): boolean {
    return this.state === 'held' && !this.talked;
  }

  /**
   * Ends the window early and connects now: something learnt during the hold vouches for the
   * client (an allowlisting score, a cluster peer that saw it pass). `reason` goes to the summary
   * as `released`. No-op unless the client is still silently held.
   */
  release(reason: string): void {
    if (!this.holding) return;
    this.endHold();
    (this.outcome ??= {}).released = reason;
    try {
      this.connectNext();
    } catch (err) {
      this.engineFailed(err);
    }
  }

  /**
   * Turns a held client away instead of connecting it (a blocklist score, a cluster peer's
   * deny): `drop` resets the connection, otherwise `reply` (one SMTP reply, no CRLF) is sent.
   * No-op unless the client is still silently held.
   */
  refuse(verdict: Verdict, cause: string, how: { readonly drop: true } | { readonly reply: string }): void {
    if (!this.holding) return;
    this.endHold();
    if ('reply' in how) {
      this.replyAndFinish({ text: `${how.reply}\r\n` }, verdict, cause);
      return;
    }
    this.finish(verdict, cause);
    this.engine.engine.drop(this.eid);
  }

  gone(cause: string): void {
    if (this.done) return;
    // An engine syscall failed on this connection (ENOSPC/ENOMEM from epoll_ctl in a flood); a dead thread is logged by the driver.
    if (cause.startsWith('engine_') && cause !== 'engine_thread_died') {
      this.ctx.log.warn({ client: hostPort(this.clientAddress, this.clientPort) }, `native engine failed on a connection: ${cause}`);
    }
    this.endHold();
    this.finish(engineEndVerdict(cause, false), cause);
  }

  expired(heldMs: number): void {
    // Released or refused an instant before the engine thread ended the window: already decided.
    if (this.done || this.state !== 'held') return;
    this.heldMs = heldMs;
    this.connectNext();
  }

  upstreamFailed(stage: 'connect' | 'greeting', code: string): void {
    if (this.done || !this.attempts) return;
    if (stage === 'greeting') this.attempts.connected();
    const cause = upstreamFailureCause(stage, code);
    if (this.attempts.failed(cause, undefined)) this.connectNext();
    else this.noServer(this.attempts.lastFailure ?? cause);
  }

  greeted(code: string, connectMs: number, relaying: boolean): void {
    if (this.done || !this.attempts) return;
    const o = (this.outcome ??= {});
    o.connectMs = round2(connectMs);
    o.greeting = code;
    this.attempts.connected();
    if (relaying) {
      this.state = 'relaying';
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
    this.replyAndFinish({ greeting: true }, 'passed', cause);
  }

  ended(cause: string, bytesFromClient: number, bytesToClient: number): void {
    this.finalFrom = bytesFromClient;
    this.finalTo = bytesToClient;
    this.finish(engineEndVerdict(cause, true), cause, true);
  }

  caught(test: ProtocolTest, evidence: Buffer, ended: boolean, bytesFromClient: number, bytesToClient: number): void {
    if (this.done) return;
    const o = (this.outcome ??= {});
    const action = protocolActionOf(this.policy.profile.protocol, test);
    // The summary names the first test that caught the client, or the one that ended the session.
    if (o.protocol === undefined || ended) o.protocol = { test, action: action === 'ignore' ? 'log' : action, evidence };
    if (!ended) return; // action log: the relay goes on
    this.finalFrom = bytesFromClient;
    this.finalTo = bytesToClient;
    this.finish('protocol', test, true);
  }

  shutdown(): void {
    if (this.state !== 'held') return;
    this.endHold();
    this.replyAndFinish({ text: `${SHUTDOWN_REPLY}\r\n` }, 'shutdown', 'shutdown', false);
  }

  abort(cause: string): void {
    if (this.done) return;
    if (!this.relayed) this.endHold();
    this.finish(this.relayed ? 'passed' : 'shutdown', cause);
    this.engine.engine.close(this.eid, cause);
  }

  private endHold(): void {
    if (this.state === 'held') this.heldMs = performance.now() - this.started;
  }

  private connectNext(): void {
    const a = (this.attempts ??= this.newAttempts());
    this.state = 'connecting';
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
          localAddress: this.localAddress,
          localPort: this.localPort,
        });
        const ok = this.engine.engine.connect(this.eid, {
          profile: this.profile,
          family: target.address.includes(':') ? 6 : 4,
          sourceAddress: plan.sourceAddress,
          synCount: plan.synCount,
          address: target.address,
          port: target.port,
          timeoutMs: this.policy.connectTimeoutMs,
          preamble: plan.preamble,
        });
        if (!ok) this.lost();
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
    return new Attempts(this.ctx, this.policy, this.family, () => ({ address: this.localAddress, port: this.localPort }));
  }

  /** No backend could take the session: tell the client to come back later. */
  private noServer(cause: string): void {
    this.replyAndFinish({ text: `${this.policy.noServerReply}\r\n` }, 'no_server', cause);
  }

  /**
   * A final reply, then the summary (which counts the reply's bytes). After a teaser a reply's
   * lines must share one code, so "220 …" completes the greeting and the reply answers the
   * client's first command instead.
   */
  private replyAndFinish(reply: { text: string } | { greeting: true }, verdict: Verdict, cause: string, deferrable = true): void {
    const first = deferrable && this.teased ? `220 ${this.policy.teaser!.slice(4)}\r\n` : undefined;
    // The profile goes along: a connection still `new` (no window) has none yet.
    this.finalTo = Math.max(
      0,
      this.engine.engine.reply(this.eid, { ...reply, profile: this.profile, ...(first !== undefined ? { first } : {}) }),
    );
    this.finish(verdict, cause);
  }

  /** An engine command threw (an argument it refused, e.g. an address literal): end the session, free its slot. */
  private engineFailed(err: unknown): void {
    const cause = `engine_${connectFailureCause(err)}`;
    this.ctx.log.warn({ err, client: hostPort(this.clientAddress, this.clientPort) }, `native engine command failed: ${cause}`);
    this.finish('client_gone', cause);
    this.engine.engine.drop(this.eid);
  }

  /**
   * The engine refused a command: its thread ended the connection an instant before (early talk,
   * hang-up, a dead thread), and that event is on its way to this thread; it ends the session
   * with its true verdict. Never keep the slot: if no event comes, the session ends anyway.
   */
  private lost(): void {
    if (this.lostTimer) return;
    this.lostTimer = setTimeout(() => {
      if (this.done) return;
      this.finish('client_gone', 'engine_lost');
      this.engine.engine.drop(this.eid);
    }, LOST_GRACE_MS);
    this.lostTimer.unref();
  }

  /**
   * Runs a decision made for this session outside its engine events (a DNSBL answer, a cluster
   * peer's verdict, a timer): if it throws, this session ends (internal_error), nothing else.
   */
  guarded(decide: () => void): void {
    try {
      decide();
    } catch (err) {
      this.failed(err);
    }
  }

  /** A handler of this session's events threw (a bug in a decision): this session ends, the others go on. */
  failed(err: unknown): void {
    if (this.done) return;
    this.ctx.log.error(
      { err, client: hostPort(this.clientAddress, this.clientPort) },
      `session ${this.id}: a decision failed, the session ends (internal_error): ${err instanceof Error ? err.message : String(err)}`,
    );
    this.endHold();
    this.finish('error', 'internal_error');
    this.engine.engine.drop(this.eid);
  }

  /** `fromEngine`: the counts came with the engine's END; otherwise they are read now (the connection may still linger). */
  private finish(verdict: Verdict, cause: string, fromEngine = false): void {
    if (this.done) return;
    if (this.lostTimer) clearTimeout(this.lostTimer);
    if (!fromEngine) {
      const live = this.engine.engine.inspect(this.eid);
      if (live) {
        this.finalFrom = Math.max(this.finalFrom, live.bytesFromClient);
        // A final reply is counted by the engine, or else by what reply() said it wrote.
        this.finalTo = Math.max(this.finalTo, live.bytesToClient);
      }
    }
    this.state = 'closed';
    this.engine.detach(this.eid);
    this.attempts?.release();
    this.ctx.sessionEnded(
      this,
      summaryOf({
        id: this.id,
        listener: this.ctx.listener,
        clientAddress: this.clientAddress,
        clientPort: this.clientPort,
        verdict,
        cause,
        action: this.policy.action,
        talkedAfterMs: this.outcome?.talkedAfterMs,
        talkedDuring: this.outcome?.talkedDuring,
        evidence: this.outcome?.evidence,
        protocol: this.outcome?.protocol,
        attempts: this.attempts,
        greeting: this.outcome?.greeting,
        connectMs: this.outcome?.connectMs,
        skipped: this.skipped,
        released: this.outcome?.released,
        reputation: this.outcome?.reputation,
        heldMs: this.heldMs,
        started: this.started,
        bytesFromClient: this.finalFrom,
        bytesToClient: this.finalTo,
      }),
    );
  }
}
