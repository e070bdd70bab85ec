// The engine profile the engine tests start from: short lingers, no idle limits; each test changes what it is about.

import type { EngineProfile } from '../../src/proxy/protocol.js';

/** A profile for tests: short lingers, no idle limits; each test profile changes what it is about. */
export const TEST_PROFILE: EngineProfile = {
  action: 'drop',
  rejectReply: '',
  teaser: '',
  clientIdleMs: 0,
  serverIdleMs: 0,
  greetingTimeoutMs: 0,
  stripPipeconnect: false,
  evidenceBytes: 100,
  greetingMaxBytes: 4096,
  earlyBufferBytes: 65536,
  replyLingerMs: 1000,
  serverGoneLingerMs: 3000,
  deferredReplyMs: 1000,
  decisionMs: 60_000,
  protocol: {
    pipelining: 'ignore',
    nonSmtpCommand: 'ignore',
    bareNewline: 'ignore',
    commands: [],
    rejectReply: '',
    maxBytes: 4096,
    maxCommands: 20,
  },
};
