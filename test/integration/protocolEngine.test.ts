// The inline protocol tests (native/src/inspect.cc) through the real engine: what passes, what is caught, what the backend never sees, with every split of the client's bytes.
//
// One engine, one recording SMTP backend, windows of 0 ms: each session is a client the engine
// connects at once; the preamble's first line names the session (the client's port) and says
// whether the backend offers PIPELINING. The backend answers each command line at once and
// records every line it got, so a test can say which commands reached it.

import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NON_SMTP_COMMANDS } from '../../src/config/protocolSchema.js';
import { loadEngine } from '../../src/native/engine.js';
import { INSPECT_MAX_BYTES, INSPECT_MAX_COMMANDS, PROTOCOL_REPLY } from '../../src/proxy/policy.js';
import { type EngineEvent, type EngineProfile, EV_ACCEPT, EV_END, EV_PROTOCOL, type ProtocolAction } from '../../src/proxy/protocol.js';
import { TEST_PROFILE } from '../helpers/engineProfile.js';
import { closeServer, type RelayEngine, startRelayEngine } from '../helpers/relayEngine.js';
import { sleep, waitFor } from '../helpers/wait.js';

const engine = loadEngine();

function profileWith(action: ProtocolAction, commands: readonly string[] = NON_SMTP_COMMANDS): EngineProfile {
  return {
    ...TEST_PROFILE,
    clientIdleMs: 10_000,
    serverIdleMs: 10_000,
    greetingTimeoutMs: 10_000,
    stripPipeconnect: true,
    protocol: {
      pipelining: action,
      nonSmtpCommand: action,
      bareNewline: action,
      commands,
      rejectReply: `${PROTOCOL_REPLY}\r\n`,
      maxBytes: INSPECT_MAX_BYTES,
      maxCommands: INSPECT_MAX_COMMANDS,
    },
  };
}
const P = { reject: 0, drop: 1, log: 2, ignore: 3, sasl: 4 } as const;
type ProfileName = keyof typeof P;

interface Recorded {
  lines: string[];
  closed: boolean;
}
const recorded = new Map<string, Recorded>();
/** The next session's profile and whether the backend offers PIPELINING (sessions run one at a time). */
let plan = { profile: 0, pipelining: false };
const events: EngineEvent[] = [];
let listenPort = 0;
let backend: net.Server;
let backendPort = 0;
let relay: RelayEngine | undefined;

/** A minimal SMTP server that answers at once and records each line (DATA's body included, as it came). */
function serve(s: net.Socket): void {
  s.setNoDelay(true);
  s.on('error', () => undefined);
  let buf = '';
  let key: string | undefined;
  let pipelining = false;
  let inData = false;
  const rec: Recorded = { lines: [], closed: false };
  s.on('close', () => (rec.closed = true));
  s.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl + 1);
      buf = buf.slice(nl + 1);
      if (key === undefined) {
        // The preamble: "<client port> <0|1>".
        const [port, pipe] = line.trim().split(' ');
        key = port!;
        pipelining = pipe === '1';
        recorded.set(key, rec);
        s.write('220 backend ESMTP\r\n');
        continue;
      }
      rec.lines.push(line);
      if (inData) {
        if (line === '.\r\n') {
          inData = false;
          s.write('250 2.0.0 queued\r\n');
        }
        continue;
      }
      const verb = line.slice(0, 4).toUpperCase();
      if (verb === 'EHLO')
        s.write(`250-backend\r\n250-SIZE 1000000\r\n${pipelining ? '250-PIPELINING\r\n' : ''}250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n`);
      else if (verb === 'HELO') s.write('250 backend\r\n');
      else if (verb === 'DATA') {
        inData = true;
        s.write('354 go ahead\r\n');
      } else if (verb === 'QUIT') {
        s.end('221 bye\r\n');
      } else if (verb === 'AUTH') s.write('334 VXNlcm5hbWU6\r\n');
      else if (verb === 'POST' || line.startsWith('c2Vj')) s.write(line.startsWith('c2Vj') ? '235 ok\r\n' : '334 UGFzc3dvcmQ6\r\n');
      else if (verb === 'STAR') s.write('220 ready for TLS\r\n');
      else if (['MAIL', 'RCPT', 'RSET', 'NOOP'].includes(verb)) s.write('250 ok\r\n');
      else s.write('502 5.5.2 unrecognised\r\n');
    }
  });
}

beforeAll(async () => {
  backend = net.createServer(serve);
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  backendPort = (backend.address() as net.AddressInfo).port;
  engine.defineProfile(P.reject, profileWith('reject'));
  engine.defineProfile(P.drop, profileWith('drop'));
  engine.defineProfile(P.log, profileWith('log'));
  engine.defineProfile(P.ignore, profileWith('ignore'));
  // A non-SMTP word that is also valid base64: a SASL response must not be taken for a command.
  engine.defineProfile(P.sasl, profileWith('reject', ['CONNECT', 'GET', 'POST']));
  relay = startRelayEngine(
    backendPort,
    (ev) => ({ profile: plan.profile, preamble: `${ev[5]} ${plan.pipelining ? 1 : 0}\n` }),
    (ev) => events.push(ev),
  );
  listenPort = relay.port;
});

afterAll(async () => {
  relay?.stop();
  await closeServer(backend);
});

/** A step of a client: bytes to write (in these pieces, a few ms apart), or a wait for the received text to match. */
type Step = string | string[] | RegExp;

interface Outcome {
  got: string;
  how: 'end' | 'reset';
  backend: Recorded;
  protocol: EngineEvent | undefined;
  end: EngineEvent | undefined;
}

async function run(steps: Step[], profile: ProfileName = 'reject', pipelining = false): Promise<Outcome> {
  plan = { profile: P[profile], pipelining };
  const c = net.connect({ port: listenPort, host: '127.0.0.1' });
  c.setNoDelay(true);
  let got = '';
  let how: 'end' | 'reset' | undefined;
  c.on('data', (d: Buffer) => (got += d.toString('latin1')));
  c.on('error', () => (how ??= 'reset'));
  c.on('end', () => {
    how ??= 'end';
    c.end();
  });
  c.on('close', () => (how ??= 'end'));
  await new Promise<void>((r) => c.once('connect', r));
  const port = c.localPort!;
  await waitFor(() => got.includes('220 backend'), { interval: 2, what: 'the greeting' });
  const rec = await waitFor(() => recorded.get(String(port)), { interval: 2, what: 'the backend session' });
  let seen = got.length;
  for (const step of steps) {
    if (step instanceof RegExp) {
      await waitFor(() => how !== undefined || step.test(got.slice(seen)), { interval: 2, what: `${step} in ${JSON.stringify(got)}` });
      seen = got.length;
      continue;
    }
    for (const piece of Array.isArray(step) ? step : [step]) {
      if (how !== undefined) break;
      c.write(piece);
      if (Array.isArray(step)) await sleep(5);
    }
  }
  if (how === undefined) c.end();
  await waitFor(() => how !== undefined, { what: 'the end of the session' });
  await waitFor(() => rec.closed, { what: 'the backend side to close' });
  // The engine's last word on this session (its id is the ACCEPT of this client port).
  const accept = events.find((e) => e[0] === EV_ACCEPT && e[5] === port)!;
  const id = accept[1];
  const last = await waitFor(() => events.find((e) => (e[0] === EV_END || (e[0] === EV_PROTOCOL && e[4] === 1)) && e[1] === id), {
    what: 'END or a final PROTOCOL',
  });
  void last;
  return {
    got,
    how: how!,
    backend: rec,
    protocol: events.find((e) => e[0] === EV_PROTOCOL && e[1] === id),
    end: events.find((e) => e[0] === EV_END && e[1] === id),
  };
}

const polite: Step[] = [
  'EHLO client.example\r\n',
  /^250 /m,
  'MAIL FROM:<a@example.org>\r\n',
  /^250 /m,
  'RCPT TO:<b@example.net>\r\n',
  /^250 /m,
  'DATA\r\n',
  /^354 /m,
  'Subject: hi\r\n\r\nbare\nnewlines and GET / HTTP/1.1 in the body are message data\r\n.\r\n',
  /^250 /m,
  'QUIT\r\n',
  /^221 /m,
];

describe('good clients pass with every test at reject', () => {
  it('one command at a time, PIPELINING not offered: no event, every line reached the backend', async () => {
    const o = await run(polite, 'reject', false);
    expect(o.protocol).toBeUndefined();
    expect(o.end?.[2]).toBe('server_closed');
    expect(o.backend.lines.map((l) => l.slice(0, 4))).toEqual([
      'EHLO',
      'MAIL',
      'RCPT',
      'DATA',
      'Subj',
      '\r\n',
      'bare',
      'newl',
      '.\r\n',
      'QUIT',
    ]);
  });

  it('RFC 2920 groups where PIPELINING is offered: MAIL, RCPT, RCPT, DATA in one write; RSET, MAIL, RCPT, DATA again', async () => {
    const o = await run(
      [
        'EHLO client.example\r\n',
        /^250 /m,
        'MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n',
        /^354 /m,
        'Subject: hi\r\n\r\nbody\r\n.\r\n',
        /^250 2.0.0/m,
        'RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nNOOP\r\n',
        /^250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n/,
        'QUIT\r\n',
        /^221 /m,
      ],
      'reject',
      true,
    );
    expect(o.protocol).toBeUndefined();
    expect(o.backend.lines.at(-1)).toBe('QUIT\r\n');
  });

  it('AUTH with a SASL response that is a listed word ("POST" is base64): not a command', async () => {
    const o = await run(
      ['EHLO c\r\n', /^250 /m, 'AUTH LOGIN\r\n', /^334 /m, 'POST\r\n', /^334 /m, 'c2VjcmV0\r\n', /^235 /m, 'QUIT\r\n', /^221/m],
      'sasl',
    );
    expect(o.protocol).toBeUndefined();
    expect(o.backend.lines).toContain('POST\r\n');
  });

  it('after the 220 to STARTTLS nothing is inspected (the bytes would be TLS)', async () => {
    const o = await run(['EHLO c\r\n', /^250 /m, 'STARTTLS\r\n', /^220 /m, 'GET / HTTP/1.1\n', /^502 /m, 'QUIT\r\n', /^221/m]);
    expect(o.protocol).toBeUndefined();
    expect(o.backend.lines).toContain('GET / HTTP/1.1\n');
  });

  it('past the bound (20 commands) nothing is inspected', async () => {
    const noops = Array.from({ length: INSPECT_MAX_COMMANDS }, (): Step[] => ['NOOP\r\n', /^250 /m]).flat();
    const o = await run([...noops, 'CONNECT x:25 HTTP/1.0\r\n', /^502 /m, 'QUIT\r\n', /^221/m]);
    expect(o.protocol).toBeUndefined();
    expect(o.backend.lines).toContain('CONNECT x:25 HTTP/1.0\r\n');
  });

  it('all tests ignored: a bot goes through as before', async () => {
    const o = await run(['EHLO x\nMAIL FROM:<a@b>\r\nGET / HTTP/1.1\r\n', /^502/m, 'QUIT\r\n', /^221/m], 'ignore');
    expect(o.protocol).toBeUndefined();
    expect(o.backend.lines.slice(0, 3)).toEqual(['EHLO x\n', 'MAIL FROM:<a@b>\r\n', 'GET / HTTP/1.1\r\n']);
  });
});

/**
 * The bots of issue 24. `reached`: what the backend got. A caught segment goes nowhere, the
 * lines before the offending one included: the session ends there, so they would be of no use.
 */
const BOTS: { name: string; bytes: string; test: string; before?: Step[]; pipelining?: boolean; reached: string[] }[] = [
  { name: 'CONNECT host:25 HTTP/1.0', bytes: 'CONNECT host:25 HTTP/1.0\r\n\r\n', test: 'non_smtp_command', reached: [] },
  { name: 'GET / HTTP/1.1', bytes: 'GET / HTTP/1.1\r\nHost: mx\r\n\r\n', test: 'non_smtp_command', reached: [] },
  { name: 'post (any case)', bytes: 'post /x HTTP/1.0\r\n', test: 'non_smtp_command', reached: [] },
  { name: 'EHLO x\\n', bytes: 'EHLO x\n', test: 'bare_newline', reached: [] },
  {
    name: 'HELO then MAIL/RCPT/DATA at once (no PIPELINING offered)',
    bytes: 'HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n',
    test: 'pipelining',
    reached: [],
  },
  {
    name: 'MAIL/RCPT/DATA at once after EHLO (no PIPELINING offered)',
    before: ['EHLO x\r\n', /^250 /m],
    bytes: 'MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n',
    test: 'pipelining',
    reached: ['EHLO x\r\n'],
  },
  {
    name: 'MAIL before the EHLO reply (PIPELINING offered)',
    bytes: 'EHLO x\r\nMAIL FROM:<a@b>\r\n',
    test: 'pipelining',
    pipelining: true,
    reached: [],
  },
  {
    name: 'message data before the 354 (PIPELINING offered: DATA must be last)',
    before: ['EHLO x\r\n', /^250 /m],
    bytes: 'MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: spam\r\n',
    test: 'pipelining',
    pipelining: true,
    reached: ['EHLO x\r\n'],
  },
  {
    name: 'part of a data line before the 354 (PIPELINING offered): caught when the 354 comes',
    before: ['EHLO x\r\n', /^250 /m],
    bytes: 'MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: spam',
    test: 'pipelining',
    pipelining: true,
    // The whole lines are a valid RFC 2920 group and went on; the data never did.
    reached: ['EHLO x\r\n', 'MAIL FROM:<a@b>\r\n', 'RCPT TO:<c@d>\r\n', 'DATA\r\n'],
  },
];

describe('bots are caught before the backend sees the offending command', () => {
  for (const bot of BOTS) {
    it(`${bot.name}: reject`, async () => {
      const o = await run([...(bot.before ?? []), bot.bytes], 'reject', bot.pipelining ?? false);
      expect(o.protocol?.[2]).toBe(bot.test);
      expect(o.protocol?.[4]).toBe(1);
      expect(o.end).toBeUndefined();
      expect(o.got).toContain(`${PROTOCOL_REPLY}\r\n`);
      expect(o.how).toBe('end');
      expect(o.backend.lines).toEqual(bot.reached);
      // The evidence is the offending line (bounded by evidenceBytes).
      const evidence = (o.protocol![3] as Buffer).toString('latin1');
      expect(bot.bytes.includes(evidence) || evidence.length === 100).toBe(true);
    });

    // A pipelining bot split in pieces a few ms apart is a polite client up to the split: only the
    // tests that look at one line are run with every split.
    if (bot.test === 'pipelining') continue;
    it(`${bot.name}: split in two at many places, and one byte at a time`, async () => {
      const b = bot.bytes;
      const cuts: string[][] = [[...b]];
      for (let i = 1; i < b.length; i += Math.max(1, Math.floor(b.length / 12))) cuts.push([b.slice(0, i), b.slice(i)]);
      for (const pieces of cuts) {
        const o = await run([...(bot.before ?? []), pieces], 'reject', bot.pipelining ?? false);
        expect(o.protocol?.[2], JSON.stringify(pieces)).toBe(bot.test);
        expect(o.backend.lines, JSON.stringify(pieces)).toEqual(bot.reached);
      }
    });
  }

  it('drop: the client is reset, the backend gets nothing', async () => {
    const o = await run(['GET / HTTP/1.1\r\n'], 'drop');
    expect(o.protocol?.[2]).toBe('non_smtp_command');
    expect(o.protocol?.[4]).toBe(1);
    expect(o.how).toBe('reset');
    expect(o.backend.lines).toEqual([]);
  });

  it('log: the event is reported once per test, the session goes on, the lines reach the backend', async () => {
    const o = await run(['EHLO x\nGET / HTTP/1.1\r\n', /^502 /m, 'QUIT\r\n', /^221 /m], 'log');
    const caught = events.filter((e) => e[0] === EV_PROTOCOL && e[1] === o.protocol?.[1]);
    expect(caught.map((e) => [e[2], e[4]])).toEqual([
      ['bare_newline', 0],
      ['non_smtp_command', 0],
      ['pipelining', 0],
    ]);
    expect(o.end?.[2]).toBe('server_closed');
    expect(o.backend.lines).toEqual(['EHLO x\n', 'GET / HTTP/1.1\r\n', 'QUIT\r\n']);
  });

  it('the engine holds nothing afterwards', async () => {
    await waitFor(() => engine.counts().connections === 0, { what: 'no connections' });
    expect(engine.counts().bufferedBytes).toBe(0);
  });
});

describe('hostile bytes', () => {
  /** A deterministic PRNG (mulberry32): a failure can be replayed. */
  function rng(seed: number): () => number {
    let a = seed;
    return () => {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  const WORDS = [
    'EHLO x',
    'HELO x',
    'MAIL FROM:<a@b>',
    'RCPT TO:<c@d>',
    'DATA',
    'BDAT 5',
    'AUTH LOGIN',
    'STARTTLS',
    'GET /',
    'NOOP',
    'RSET',
    'QUIT',
    '',
    '\0\xff',
    'x'.repeat(300),
  ];

  it('random command soup in random pieces, at log and at reject: the engine never stalls and holds nothing afterwards', async () => {
    const next = rng(24);
    for (let i = 0; i < 60; i++) {
      let soup = '';
      const n = 1 + Math.floor(next() * 12);
      for (let k = 0; k < n; k++) soup += WORDS[Math.floor(next() * WORDS.length)]! + ['\r\n', '\n', '\r', ' '][Math.floor(next() * 4)]!;
      const pieces: string[] = [];
      for (let at = 0; at < soup.length; ) {
        const len = 1 + Math.floor(next() * 40);
        pieces.push(soup.slice(at, at + len));
        at += len;
      }
      const o = await run([pieces, 'QUIT\r\n'], i % 2 === 0 ? 'log' : 'reject', next() < 0.5);
      expect(['end', 'reset']).toContain(o.how);
      if (o.protocol?.[4] === 1) expect(o.got).toContain(PROTOCOL_REPLY);
    }
    await waitFor(() => engine.counts().connections === 0, { what: 'no connections' });
    expect(engine.counts().bufferedBytes).toBe(0);
  }, 60_000);
});
