// Types only: the native engine's commands, events and profiles, and the session contract (policy, phases, summary, LiveSession, context).
//
// Like HAProxy's `-t.h` headers, this file holds no behaviour: the engine (native/src, typed by
// src/native/engine.ts), the session (src/proxy/session.ts), the App and the API all speak
// these types. The event codes are the one shared vocabulary with the C++ side
// (native/src/types.h), checked by test/unit/native.test.ts.

import type { Logger } from 'pino';
import type { Pool, Server } from '../backend/pool.js';
import type { ProtocolAction } from '../config/protocolSchema.js';
import type { Mode } from '../config/schema.js';
import type { SourceStrategy } from './upstream.js';

// ---------------------------------------------------------------------------------------------
// The engine: events (one tuple per event; a batch is an array of them, in order)

export const EV_ACCEPT = 1,
  EV_TALK = 2,
  EV_GONE = 3,
  EV_EXPIRED = 4,
  EV_UPSTREAM_FAILED = 5,
  EV_GREETING = 6,
  EV_END = 7,
  EV_ERROR = 8,
  EV_PROTOCOL = 9,
  EV_THREAD = 10;

/** The inline protocol tests the engine runs on the client's first commands (native/src/inspect.h TestName). */
export type ProtocolTest = 'pipelining' | 'non_smtp_command' | 'bare_newline';

/** What a protocol test does when it catches a client: `ignore` (off), `log` (mark the session, go on), `reject` (5xx, close both sides), `drop` (RST). */
export type { ProtocolAction };

/** Where a connection was when the client talked early: the window, or while etd was connecting / reading the greeting. */
export type TalkStage = 'held' | 'connecting' | 'greeting';

export type EngineEvent =
  | [typeof EV_ACCEPT, number, number, 4 | 6, string, number, string, number] // id, listenerId, family, peerAddress, peerPort, localAddress, localPort
  | [typeof EV_TALK, number, number, Buffer, number, TalkStage, number] // id, afterMs, evidence, bytes read so far, stage, bytes sent so far (teaser)
  | [typeof EV_GONE, number, string] // id, cause
  | [typeof EV_EXPIRED, number, number] // id, heldMs
  | [typeof EV_UPSTREAM_FAILED, number, 'connect' | 'greeting', string, number] // id, stage, code, elapsedMs
  | [typeof EV_GREETING, number, string, number, 0 | 1] // id, code, connectMs, relaying
  | [typeof EV_END, number, string, number, number] // id, cause, bytesFromClient, bytesToClient
  | [typeof EV_ERROR, number, string, string] // listenerId, syscall, code
  | [typeof EV_THREAD, number, string, string, number, number, number] // thread, syscall, code, connections lost, of them held, of them relaying
  | [typeof EV_PROTOCOL, number, ProtocolTest, Buffer, 0 | 1, number, number]; // id, test, evidence, ended (reject/drop applied: no further events), bytesFromClient, bytesToClient

// ---------------------------------------------------------------------------------------------
// The engine: what it applies on its own, given by TypeScript (no constant written on both sides)

/**
 * A policy profile: everything the engine does without asking (docs/engine.md, Profiles).
 * Times in ms (0 = no limit where said), sizes in bytes; strings are sent as they are (CRLF included).
 */
export interface EngineProfile {
  /** Early talk: `drop` (RST), `reject` (rejectReply, then close), `log` (record it, keep holding, forward the early bytes upstream after the greeting). */
  readonly action: 'drop' | 'reject' | 'log';
  readonly rejectReply: string;
  /** Written to the client when the hold starts ('' = none): postscreen's `220-` bait. */
  readonly teaser: string;
  /** Relay idle limits per side (0 = none). */
  readonly clientIdleMs: number;
  readonly serverIdleMs: number;
  /** A fixed deadline from the established connection to the complete greeting. */
  readonly greetingTimeoutMs: number;
  /** The PIPECONNECT guard on the relay (server → client). */
  readonly stripPipeconnect: boolean;
  /** Early-talk bytes reported as evidence in TALK. */
  readonly evidenceBytes: number;
  /** A greeting without an end after this many bytes counts as complete. */
  readonly greetingMaxBytes: number;
  /** action `log`: early bytes kept and forwarded after the greeting; past this the client is not read until the relay. */
  readonly earlyBufferBytes: number;
  /** After a final reply: how long the client may take to read it (and send its EOF) before the close. */
  readonly replyLingerMs: number;
  /** After the server failed mid-relay: how long the client may take to read what is left. */
  readonly serverGoneLingerMs: number;
  /** After a teaser, a deferred reply waits this long for the client's first command line. */
  readonly deferredReplyMs: number;
  /** In `waiting` (after EXPIRED, UPSTREAM_FAILED or a refused greeting) TypeScript must command within this; then GONE `undecided`. */
  readonly decisionMs: number;
  /** The inline protocol tests on the relay's first commands (docs/engine.md, Protocol tests). */
  readonly protocol: EngineProtocolTests;
}

/** The inline protocol tests: an action per test, the non-SMTP first words, the reply of `reject`, the inspection's bounds. */
export interface EngineProtocolTests {
  readonly pipelining: ProtocolAction;
  readonly nonSmtpCommand: ProtocolAction;
  readonly bareNewline: ProtocolAction;
  /** First words that are not SMTP (matched ignoring case); 1..32 chars each, at most 64. */
  readonly commands: readonly string[];
  /** Written by action `reject` (CRLF included). */
  readonly rejectReply: string;
  /** The inspection ends past this many client bytes (1..65536)... */
  readonly maxBytes: number;
  /** ...or this many client lines (1..64). */
  readonly maxCommands: number;
}

export interface EngineHold {
  readonly windowMs: number;
  readonly profile: number;
}

export interface EngineConnect {
  readonly profile: number;
  readonly family: 4 | 6;
  /** '' = etd's own address (the kernel chooses); otherwise the spoofed source (IP_TRANSPARENT). */
  readonly sourceAddress: string;
  /** TCP_SYNCNT (0 = the kernel's default). */
  readonly synCount: number;
  readonly address: string;
  readonly port: number;
  /** Bound on the TCP connect (0 = only the kernel's own). */
  readonly timeoutMs: number;
  /** Written before anything else once connected (a PROXY header); may be empty. */
  readonly preamble: Buffer;
}

/**
 * A final reply before the relay. `text`, or with `greeting` the last refused greeting. With
 * `first`, `first` is written at once and the reply waits for the client's first command line
 * (after a teaser: "220 …" completes the greeting, the refusal answers the first command).
 */
export interface EngineReply {
  readonly text?: string;
  readonly greeting?: boolean;
  readonly first?: string;
  /** The profile whose linger times apply; required while the connection is still `new` (no hold/connect gave it one). */
  readonly profile?: number;
}

export type EngineState = 'new' | 'held' | 'waiting' | 'connecting' | 'greeting' | 'relaying' | 'closing';

export interface EngineInspect {
  readonly state: EngineState;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
}

export interface EngineCounts {
  /** Every connection the engine owns (a lingering final reply included). */
  readonly connections: number;
  readonly held: number;
  readonly relaying: number;
  readonly listeners: number;
  readonly fds: number;
  /** Bytes in relay/reply/early buffers now (the per-connection bound is in docs/engine.md). */
  readonly bufferedBytes: number;
  /** Deadline entries queued (stay proportional to live connections). */
  readonly deadlines: number;
  /** Exceptions that escaped the event callback (caught by the engine; it keeps serving). */
  readonly callbackErrors: number;
}

/** One engine thread's counts (engineCounts() gives one row per thread; the sums above are over them). */
export interface EngineThreadCounts extends Omit<EngineCounts, 'callbackErrors'> {
  readonly thread: number;
  /** False once the thread has ended on an error, until it is started again. */
  readonly running: boolean;
  /** The thread's kernel id (0 while it is not running). */
  readonly tid: number;
  /** CPU time (user + system) of the thread since it started, in ms. */
  readonly cpuMs: number;
  /** Connections it accepted since it started. */
  readonly accepted: number;
}

// ---------------------------------------------------------------------------------------------
// Sessions

/** The part of the config a session works by; captured when the connection arrives. */
export interface SessionPolicy {
  readonly windowMs: number;
  readonly action: 'drop' | 'reject' | 'log';
  readonly rejectReply: string;
  readonly noServerReply: string;
  readonly connectTimeoutMs: number;
  readonly retries: number;
  readonly forward: 'pool' | 'original';
  /** First line of a multi-line greeting sent before the window ("220-mx ESMTP"), or undefined. */
  readonly teaser: string | undefined;
  /** What the engine applies on its own for this policy. */
  readonly profile: EngineProfile;
}

export type Phase = 'held' | 'connecting' | 'greeting' | 'relaying' | 'closing' | 'closed';

/** `error`: etd itself failed the session (cause `internal_error`: a decision threw; `engine_thread_died`); the client was closed. */
export type Verdict =
  | 'passed'
  | 'early_talker'
  | 'protocol'
  | 'no_server'
  | 'limit'
  | 'denied'
  | 'client_gone'
  | 'shutdown'
  | 'dnsbl'
  | 'error';

/** What the DNSBL/DNSWL lookups said of a session's client (src/reputation): its summary's `score`, `lists`, `allowlisted`. */
export interface SessionReputation {
  readonly score: number;
  /** The lists that matched and the answer each gave. */
  readonly lists: readonly { readonly name: string; readonly answer: string }[];
  /** The score was at or under reputation.allowThreshold: the window was skipped. */
  readonly allowlisted: boolean;
}

/** The operator's tcplog: one per session, logged once when the session ends. */
export interface SessionSummary {
  readonly id: number;
  readonly listener: string;
  readonly client: string;
  readonly clientAddress: string;
  readonly verdict: Verdict;
  readonly action?: string;
  readonly talkedAfterMs?: number;
  /** Where the connection was when the client talked: the window, or while etd was connecting / reading the greeting. */
  readonly talkedDuring?: TalkStage;
  readonly earlyBytes?: string;
  /** A protocol test caught the client during the relay: which, what it did, the offending line (escaped, bounded). */
  readonly protocolTest?: ProtocolTest;
  readonly protocolAction?: Exclude<ProtocolAction, 'ignore'>;
  readonly protocolBytes?: string;
  readonly server?: string;
  readonly serverAddress?: string;
  readonly greeting?: string;
  /** Why the window was skipped: allow list or pass cache. */
  readonly skipped?: string;
  /** Why the window ended early (decided during the hold). */
  readonly released?: string;
  /** DNSBL score and the lists that matched (only when one did). */
  readonly score?: number;
  readonly lists?: SessionReputation['lists'];
  /** The DNSBL/DNSWL score was at or under reputation.allowThreshold. */
  readonly allowlisted?: true;
  readonly connectMs?: number;
  readonly attempts: number;
  readonly heldMs: number;
  readonly durationMs: number;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
  readonly cause: string;
  readonly hint?: string;
}

/** What the API, the stats and shutdown need of a live session. */
/** A live session as the API lists it (plain data: it crosses threads). */
export interface LiveSessionView {
  readonly id: number;
  readonly listener: string;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly phase: Phase;
  readonly server: string | undefined;
  readonly startedAt: number;
  readonly ageMs: number;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
}

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
  /** Why the window ended early (decided during the hold), if it did. */
  readonly released?: string | undefined;
  /** Held at shutdown: a polite 421; relayed sessions are left to finish. */
  shutdown(): void;
  /** Grace time is over: end the session whatever it is doing. */
  abort(cause: string): void;
}

/** Who a session reports to: the listener's shared context. */
export interface SessionContext {
  readonly listener: string;
  readonly mode: Mode;
  /** The listener's logger (its lines carry `listener`); summary lines go to the root logger through sessionEnded (the summary carries `listener` itself). */
  readonly log: Logger;
  readonly pool: Pool;
  source: SourceStrategy;
  /** The policy for a connection arriving now (normal or stress). */
  readonly policy: SessionPolicy;
  sessionStarted(s: LiveSession): void;
  sessionRelaying(s: LiveSession): void;
  sessionEnded(s: LiveSession, summary: SessionSummary): void;
}
