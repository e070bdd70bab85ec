// The PIPECONNECT guard (native/src/smtp_guard.cc) through the real engine: every case with every split of the server's bytes, and of the client's commands.
//
// One engine, one backend, profile windows of 0 ms: each session is a client the engine
// connects at once to the backend, whose first preamble line names the session's script. The
// backend writes the server's bytes in pieces with a pause between them (no Nagle), so the
// engine reads each piece on its own, and ends; the client compares everything it got up to EOF.

import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadEngine } from '../../src/native/engine.js';
import type { EngineProfile } from '../../src/proxy/protocol.js';
import { TEST_PROFILE } from '../helpers/engineProfile.js';
import { closeServer, type RelayEngine, startRelayEngine } from '../helpers/relayEngine.js';
import { sleep, waitFor } from '../helpers/wait.js';

const engine = loadEngine();
const P_GUARD = 0;
const PROFILE: EngineProfile = {
  action: 'drop',
  rejectReply: '',
  teaser: '',
  clientIdleMs: 10_000,
  serverIdleMs: 10_000,
  greetingTimeoutMs: 10_000,
  stripPipeconnect: true,
  evidenceBytes: 100,
  greetingMaxBytes: 4096,
  earlyBufferBytes: 65536,
  replyLingerMs: 1000,
  serverGoneLingerMs: 1000,
  deferredReplyMs: 1000,
  decisionMs: 10_000,
  protocol: TEST_PROFILE.protocol,
};
/** Pause between two pieces of one side's bytes: long enough for the engine to read them apart. */
const GAP_MS = 15;

type Script = (s: net.Socket) => Promise<void>;
const scripts = new Map<string, Script>();
let listenPort = 0;
let backend: net.Server;
let relay: RelayEngine | undefined;

beforeAll(async () => {
  backend = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => undefined);
    let head = '';
    const onData = (d: Buffer): void => {
      head += d.toString('latin1');
      const nl = head.indexOf('\n');
      if (nl < 0) return;
      s.off('data', onData);
      const key = head.slice(0, nl);
      const rest = head.slice(nl + 1);
      if (rest) s.unshift(Buffer.from(rest, 'latin1'));
      void (async () => {
        await waitFor(() => scripts.has(key), { interval: 2, what: `the script for ${key}` });
        await scripts.get(key)!(s);
        scripts.delete(key);
      })();
    };
    s.on('data', onData);
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  const backendPort = (backend.address() as net.AddressInfo).port;
  engine.defineProfile(P_GUARD, PROFILE);
  // The preamble names the session: the client's port, as the backend's script key.
  relay = startRelayEngine(backendPort, (ev) => ({ profile: P_GUARD, preamble: `${ev[5]}\n` }));
  listenPort = relay.port;
});

afterAll(async () => {
  relay?.stop();
  await closeServer(backend);
});

/** Runs one session: the backend runs `server`, the client writes its pieces GAP_MS apart after the greeting; resolves with what the client got up to EOF. */
function session(server: (s: net.Socket, received: () => string) => Promise<void>, clientPieces: string[] = []): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ port: listenPort, host: '127.0.0.1' });
    c.setNoDelay(true);
    let got = '';
    c.on('data', (d: Buffer) => (got += d.toString('latin1')));
    c.on('error', reject);
    c.on('end', () => {
      c.end();
      resolve(got);
    });
    c.once('connect', () => {
      scripts.set(String(c.localPort), async (s) => {
        let received = '';
        s.on('data', (d: Buffer) => (received += d.toString('latin1')));
        await server(s, () => received);
      });
      void (async () => {
        for (const piece of clientPieces) {
          // After the greeting (the relay runs), one piece per GAP_MS: the engine reads each on its own.
          await waitFor(() => got.includes('220 '), { interval: 2, what: 'the greeting' });
          c.write(piece);
          await sleep(GAP_MS);
        }
      })();
    });
  });
}

/** Every way of cutting `s` in two (and the whole). */
function splits(s: string): string[][] {
  const out: string[][] = [[s]];
  for (let i = 1; i < s.length; i++) out.push([s.slice(0, i), s.slice(i)]);
  return out;
}

/** A few cuts in three, on top of every cut in two. */
function threeWay(s: string, step: number): string[][] {
  const out: string[][] = [];
  for (let i = 1; i < s.length; i += step)
    for (let j = i + 1; j < s.length; j += step) out.push([s.slice(0, i), s.slice(i, j), s.slice(j)]);
  return out;
}

async function writePieces(s: net.Socket, pieces: string[]): Promise<void> {
  for (const [k, p] of pieces.entries()) {
    if (k > 0) await sleep(GAP_MS);
    s.write(p);
  }
  s.end();
}

/** Runs `fn` over every item, at most `n` at a time. */
async function each<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

const greeting = '220 mx.test ESMTP\r\n';

describe('PIPECONNECT stripper (server → client), every split of the server bytes', () => {
  // [name, the server's reply after its greeting, what the client must get]
  const cases: Array<[string, string, string]> = [
    ['in the middle', '250-mx.test\r\n250-PIPECONNECT\r\n250 SIZE 1000\r\n', '250-mx.test\r\n250 SIZE 1000\r\n'],
    ['as the last line', '250-mx.test\r\n250-SIZE 1000\r\n250 PIPECONNECT\r\n', '250-mx.test\r\n250 SIZE 1000\r\n'],
    [
      'right after the domain line',
      '250-mx.test\r\n250-X_PIPE_CONNECT\r\n250-PIPELINING\r\n250 HELP\r\n',
      '250-mx.test\r\n250-PIPELINING\r\n250 HELP\r\n',
    ],
    [
      'both spellings, lower case, LF only',
      '250-mx.test\n250-pipeconnect\n250-8BITMIME\n250 x_pipe_connect\n',
      '250-mx.test\n250 8BITMIME\n',
    ],
    [
      'not PIPELINING or look-alikes',
      '250-mx\r\n250-PIPELINING\r\n250-PIPECONNECTX\r\n250 CHUNKING\r\n',
      '250-mx\r\n250-PIPELINING\r\n250-PIPECONNECTX\r\n250 CHUNKING\r\n',
    ],
    ['not a one-line 250 PIPECONNECT (no EHLO reply)', '250 PIPECONNECT\r\n', '250 PIPECONNECT\r\n'],
    ['a keyword line with arguments', '250-mx\r\n250-PIPECONNECT x y\r\n250 HELP\r\n', '250-mx\r\n250 HELP\r\n'],
  ];
  for (const [name, reply, expected] of cases) {
    it(`strips the keyword ${name}`, async () => {
      const server = greeting + reply;
      const cuts = [...splits(server), ...threeWay(server, 9)];
      const wrong: string[] = [];
      await each(cuts, 64, async (pieces) => {
        const got = await session((s) => writePieces(s, pieces));
        if (got !== greeting + expected) wrong.push(`${JSON.stringify(pieces)} -> ${JSON.stringify(got)}`);
      });
      expect(wrong).toEqual([]);
    });
  }

  it('passes a line longer than 4096 bytes as it is (no unbounded holding)', async () => {
    const long = `250-${'x'.repeat(5000)}\r\n`;
    const reply = `250-mx\r\n${long}250-PIPECONNECT\r\n250 HELP\r\n`;
    for (const pieces of [[greeting + reply], [greeting + reply.slice(0, 2000), reply.slice(2000)]]) {
      expect(await session((s) => writePieces(s, pieces))).toBe(`${greeting}250-mx\r\n${long}250 HELP\r\n`);
    }
  });
});

describe('command watcher (client → server): the guard stops at DATA/BDAT/STARTTLS, every split of the client bytes', () => {
  // [name, the client's commands, whether they hold a stop command]
  const cases: Array<[string, string, boolean]> = [
    ['DATA after MAIL', 'EHLO x\r\nMAIL FROM:<a@b>\r\nDATA\r\n', true],
    ['STARTTLS', 'EHLO x\r\nSTARTTLS\r\n', true],
    ['BDAT', 'EHLO x\r\nBDAT 100 LAST\r\n', true],
    ['lower-case data', 'EHLO x\r\ndata\r\n', true],
    ['not arguments that contain the words', 'EHLO data.example\r\nMAIL FROM:<starttls@x>\r\nRCPT TO:<DATA@x>\r\n', false],
    ['not NOOP DATA or DATAX', 'NOOP DATA\r\nDATAX\r\n', false],
  ];
  const reply = '250-mx\r\n250 PIPECONNECT\r\n';
  for (const [name, commands, stops] of cases) {
    it(`${stops ? 'stops' : 'keeps guarding'}: ${name}`, async () => {
      const wrong: string[] = [];
      await each(splits(commands), 64, async (pieces) => {
        const got = await session(async (s, received) => {
          s.write(greeting);
          await waitFor(() => received().length >= commands.length, { interval: 2, what: 'every command' });
          s.end(reply);
        }, pieces);
        const expected = greeting + (stops ? reply : '250 mx\r\n');
        if (got !== expected) wrong.push(`${JSON.stringify(pieces)} -> ${JSON.stringify(got)}`);
      });
      expect(wrong).toEqual([]);
    });
  }

  it('after the stop, the server bytes pass untouched however they are split', async () => {
    const after = '250-mx\r\n250-PIPECONNECT\r\n250 HELP\r\n';
    const wrong: string[] = [];
    await each(splits(after), 64, async (pieces) => {
      const got = await session(
        async (s, received) => {
          s.write(greeting);
          await waitFor(() => received().length >= 6, { interval: 2, what: 'DATA' });
          await writePieces(s, pieces);
        },
        ['DATA\r\n'],
      );
      if (got !== greeting + after) wrong.push(`${JSON.stringify(pieces)} -> ${JSON.stringify(got)}`);
    });
    expect(wrong).toEqual([]);
  });
});
