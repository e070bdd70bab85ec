// Pure decisions about a session's words: the verdicts, and the summary's cause for what the engine reported.

import type { Action } from '../config/schema.js';
import { connectFailureCause } from '../util/errno.js';
import type { EngineProtocolTests, ProtocolAction, ProtocolTest, Verdict } from './protocol.js';

export type { Verdict } from './protocol.js';

/** Every verdict word, for counters and metrics that need the list at run time. */
export const VERDICTS = [
  'passed',
  'early_talker',
  'protocol',
  'no_server',
  'limit',
  'denied',
  'client_gone',
  'shutdown',
  'dnsbl',
  'error',
] as const satisfies readonly Verdict[];

/** The cause of an early talker's summary: what the engine did to it (action log never ends the session). */
export function earlyTalkCause(action: Exclude<Action, 'log'>): 'dropped' | 'rejected' {
  return action === 'reject' ? 'rejected' : 'dropped';
}

/** Every protocol test, for counters and metrics. */
export const PROTOCOL_TESTS = ['pipelining', 'non_smtp_command', 'bare_newline'] as const satisfies readonly ProtocolTest[];

/** The action a profile gives a protocol test (the engine reports the test, the profile says what was done). */
export function protocolActionOf(tests: EngineProtocolTests, test: ProtocolTest): ProtocolAction {
  if (test === 'pipelining') return tests.pipelining;
  return test === 'non_smtp_command' ? tests.nonSmtpCommand : tests.bareNewline;
}

/** The summary's cause for an upstream failure reported by the engine. */
export function upstreamFailureCause(stage: 'connect' | 'greeting', code: string): string {
  if (stage === 'connect') return connectFailureCause({ code });
  if (code === 'EOF') return 'server_closed_before_greeting';
  if (code === 'ETIMEDOUT') return 'server_greeting_timeout';
  return `server_${connectFailureCause({ code })}_before_greeting`;
}

/** A connection the engine ended (GONE, or END of a relay): etd's own failure when its engine thread died, else the client's or the relay's end. */
export function engineEndVerdict(cause: string, relayed: boolean): Verdict {
  if (cause === 'engine_thread_died') return 'error';
  return relayed ? 'passed' : 'client_gone';
}
