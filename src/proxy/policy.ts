// A session's policy from the config (normal or stress window), with the engine profile it runs by: the one place its numbers are set.

import type { Config } from '../config/schema.js';
import type { EngineProfile, SessionPolicy } from './protocol.js';

/** Early-talk bytes kept for the summary line (postscreen logs about as much). */
export const EVIDENCE_BYTES = 100;
/** A greeting without an end after this much counts as complete (one SMTP reply is far shorter). */
export const GREETING_MAX_BYTES = 4096;
/** action `log`: early bytes buffered and forwarded after the greeting; past this the client is not read until the relay. */
export const EARLY_BUFFER_BYTES = 64 * 1024;
/** How long a client may take to read a final reply (554/421) before it is cut off. */
export const REPLY_LINGER_MS = 5_000;
/** After the server failed mid-relay: how long the client may take to read what is left. */
export const SERVER_GONE_LINGER_MS = 10_000;
/** After a teaser, how long a deferred refusal waits for the client's first command. */
export const DEFERRED_REPLY_MS = 30_000;
/** After EXPIRED / a failed attempt the session commands at once; a connection still undecided after this is ended (`undecided`). */
export const DECISION_MS = 10_000;

/** The protocol tests' `reject` reply: postscreen's words for the same tests. */
export const PROTOCOL_REPLY = '550 5.5.1 Protocol error';
/**
 * The protocol tests watch at most this many client bytes, or this many command lines, before
 * the 354 to DATA / the 220 to STARTTLS; past that the relay is not inspected. A sender's whole
 * envelope (EHLO, MAIL, a few RCPT, DATA) fits well inside, and a bot shows itself in its first lines.
 */
export const INSPECT_MAX_BYTES = 4096;
export const INSPECT_MAX_COMMANDS = 20;

/** The session policy for a config; under stress the window is the stress window. */
export function policyOf(config: Config, stressed = false): SessionPolicy {
  const d = config.detection;
  const profile: EngineProfile = {
    action: d.action,
    rejectReply: `${d.rejectReply}\r\n`,
    teaser: d.teaser !== undefined ? `${d.teaser}\r\n` : '',
    clientIdleMs: config.timeouts.clientMs,
    serverIdleMs: config.timeouts.serverMs,
    greetingTimeoutMs: config.timeouts.serverMs,
    stripPipeconnect: d.stripPipeconnect,
    evidenceBytes: EVIDENCE_BYTES,
    greetingMaxBytes: GREETING_MAX_BYTES,
    earlyBufferBytes: EARLY_BUFFER_BYTES,
    replyLingerMs: REPLY_LINGER_MS,
    serverGoneLingerMs: SERVER_GONE_LINGER_MS,
    deferredReplyMs: DEFERRED_REPLY_MS,
    decisionMs: DECISION_MS,
    protocol: {
      pipelining: d.protocol.pipelining.action,
      nonSmtpCommand: d.protocol.nonSmtpCommand.action,
      bareNewline: d.protocol.bareNewline.action,
      commands: d.protocol.nonSmtpCommand.commands,
      rejectReply: `${PROTOCOL_REPLY}\r\n`,
      maxBytes: INSPECT_MAX_BYTES,
      maxCommands: INSPECT_MAX_COMMANDS,
    },
  };
  return {
    windowMs: stressed ? d.stress.windowMs : d.windowMs,
    action: d.action,
    rejectReply: d.rejectReply,
    noServerReply: config.upstream.noServerReply,
    connectTimeoutMs: config.upstream.connectTimeoutMs,
    retries: config.upstream.retries,
    forward: config.upstream.forward,
    teaser: d.teaser,
    profile,
  };
}
