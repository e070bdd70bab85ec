// The protocol tests' TypeScript side: config keys, defaults and validation, the engine profile, the session's verdict and summary for PROTOCOL, the pure helpers.

import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { NON_SMTP_COMMANDS } from '../../src/config/protocolSchema.js';
import type { Engine } from '../../src/native/engine.js';
import { EngineDriver } from '../../src/proxy/engineDriver.js';
import { INSPECT_MAX_BYTES, INSPECT_MAX_COMMANDS, PROTOCOL_REPLY, policyOf } from '../../src/proxy/policy.js';
import { type EngineEvent, EV_PROTOCOL } from '../../src/proxy/protocol.js';
import { Session } from '../../src/proxy/session.js';
import { PROTOCOL_TESTS, protocolActionOf, VERDICTS } from '../../src/proxy/verdict.js';
import { testSessionContext } from '../helpers/sessionContext.js';

const base = {
  listeners: [{ name: 'l', address: '127.0.0.1', port: 0 }],
  log: { level: 'silent' },
  state: { path: ':memory:' },
  upstream: { servers: [{ name: 'a', address: '10.0.0.1' }], health: { enabled: false } },
};

function problems(doc: Record<string, unknown>): string {
  try {
    validateConfig({ ...base, ...doc });
    return '';
  } catch (e) {
    return (e as Error).message;
  }
}

describe('detection.protocol config', () => {
  it('is off by default (postscreen: every deep test disabled), with the default word list', () => {
    const c = validateConfig(base);
    expect(c.detection.protocol).toEqual({
      pipelining: { action: 'ignore' },
      nonSmtpCommand: { action: 'ignore', commands: [...NON_SMTP_COMMANDS] },
      bareNewline: { action: 'ignore' },
    });
    expect(NON_SMTP_COMMANDS.slice(0, 3)).toEqual(['CONNECT', 'GET', 'POST']);
  });

  it('takes the keys of issue 24 exactly, and gives the engine profile its actions, reply and bounds', () => {
    const c = validateConfig({
      ...base,
      detection: {
        protocol: {
          pipelining: { action: 'reject' },
          nonSmtpCommand: { action: 'drop', commands: ['CONNECT', 'GET', 'POST'] },
          bareNewline: { action: 'log' },
        },
      },
    });
    expect(policyOf(c).profile.protocol).toEqual({
      pipelining: 'reject',
      nonSmtpCommand: 'drop',
      bareNewline: 'log',
      commands: ['CONNECT', 'GET', 'POST'],
      rejectReply: `${PROTOCOL_REPLY}\r\n`,
      maxBytes: INSPECT_MAX_BYTES,
      maxCommands: INSPECT_MAX_COMMANDS,
    });
    expect(PROTOCOL_REPLY).toBe('550 5.5.1 Protocol error');
  });

  it('refuses a wrong action, an unknown key, a word with a space, and an SMTP verb as a non-SMTP command', () => {
    expect(problems({ detection: { protocol: { pipelining: { action: 'enforce' } } } })).toMatch(/detection\.protocol\.pipelining\.action/);
    expect(problems({ detection: { protocol: { bareNewLine: { action: 'reject' } } } })).toMatch(/bareNewLine/);
    expect(problems({ detection: { protocol: { nonSmtpCommand: { commands: ['GET /'] } } } })).toMatch(/commands/);
    expect(problems({ detection: { protocol: { nonSmtpCommand: { commands: ['GET', 'rcpt'] } } } })).toMatch(
      /detection\.protocol\.nonSmtpCommand\.commands\[1\].*rcpt is an SMTP command/,
    );
  });
});

describe('the session and a PROTOCOL event', () => {
  function relaying(protocol: Record<string, unknown>) {
    const config = validateConfig({ ...base, detection: { window: '100ms', protocol } });
    // Every command succeeds; inspect knows nothing (the counts come with the events).
    const engine = new Proxy({}, { get: (_t, k) => (k === 'inspect' ? () => null : () => true) });
    const driver = new EngineDriver(engine as unknown as Engine);
    const { ctx, summaries } = testSessionContext(config);
    const s = new Session(
      driver,
      { eid: 3, family: 4, peerAddress: '192.0.2.7', peerPort: 4000, localAddress: '127.0.0.1', localPort: 25 },
      ctx,
    );
    s.begin();
    s.expired(100);
    s.greeted('220', 1, true);
    return { s, summaries, driver };
  }

  it('reject: verdict protocol, cause the test, the offending line escaped and bounded in the summary (strict JSON)', () => {
    const { s, summaries } = relaying({ nonSmtpCommand: { action: 'reject' } });
    s.caught('non_smtp_command', Buffer.from('CONNECT mx:25 HTTP/1.0\r\n'), true, 25, 80);
    expect(summaries).toHaveLength(1);
    const sum = summaries[0]!;
    expect(sum).toMatchObject({
      verdict: 'protocol',
      cause: 'non_smtp_command',
      protocolTest: 'non_smtp_command',
      protocolAction: 'reject',
      protocolBytes: 'CONNECT mx:25 HTTP/1.0\\r\\n',
      bytesFromClient: 25,
      bytesToClient: 80,
    });
    expect(Object.keys(JSON.parse(JSON.stringify(sum)) as object)).toEqual(Object.keys(sum));
  });

  it('log: the session goes on and ends passed, marked with the first test that caught it', () => {
    const { s, summaries } = relaying({ bareNewline: { action: 'log' }, pipelining: { action: 'log' } });
    s.caught('bare_newline', Buffer.from('EHLO x\n'), false, 7, 30);
    s.caught('pipelining', Buffer.from('MAIL FROM:<a@b>\r\n'), false, 24, 30);
    expect(summaries).toHaveLength(0);
    s.ended('client_closed', 100, 200);
    expect(summaries[0]).toMatchObject({
      verdict: 'passed',
      protocolTest: 'bare_newline',
      protocolAction: 'log',
      protocolBytes: 'EHLO x\\n',
    });
  });

  it('the driver routes EV_PROTOCOL to the session', () => {
    const { summaries, driver } = relaying({ pipelining: { action: 'drop' } });
    const ev: EngineEvent = [EV_PROTOCOL, 3, 'pipelining', Buffer.from('RCPT TO:<x>\r\n'), 1, 40, 60];
    (driver as unknown as { dispatch(b: EngineEvent[]): void }).dispatch([ev]);
    expect(summaries[0]).toMatchObject({ verdict: 'protocol', cause: 'pipelining', protocolAction: 'drop' });
  });
});

describe('pure words', () => {
  it('protocol is a verdict; each test maps to its profile action', () => {
    expect(VERDICTS).toContain('protocol');
    const tests = { pipelining: 'reject', nonSmtpCommand: 'drop', bareNewline: 'log' } as const;
    const p = { ...tests, commands: [], rejectReply: '', maxBytes: 1, maxCommands: 1 };
    expect(PROTOCOL_TESTS.map((t) => protocolActionOf(p, t))).toEqual(['reject', 'drop', 'log']);
  });
});
