// PIPECONNECT guard: stripped from EHLO replies however they are split, until DATA/BDAT/STARTTLS.

import { describe, expect, it } from 'vitest';
import { CommandWatcher, PipeconnectStripper } from '../../src/proxy/smtpFilter.js';

async function through(t: PipeconnectStripper, parts: string[]): Promise<string> {
  const out: Buffer[] = [];
  t.on('data', (c: Buffer) => out.push(c));
  for (const p of parts) t.write(Buffer.from(p, 'latin1'));
  t.end();
  await new Promise((r) => t.on('end', r));
  return Buffer.concat(out).toString('latin1');
}

/** Every way of cutting `s` into two or three pieces. */
function splits(s: string): string[][] {
  const out: string[][] = [[s]];
  for (let i = 1; i < s.length; i++) {
    out.push([s.slice(0, i), s.slice(i)]);
    for (let j = i + 1; j < s.length; j += 7) out.push([s.slice(0, i), s.slice(i, j), s.slice(j)]);
  }
  return out;
}

const greeting = '220 mx.test ESMTP\r\n';

describe('PipeconnectStripper', () => {
  const cases: Array<[string, string, string]> = [
    ['in the middle', '250-mx.test\r\n250-PIPECONNECT\r\n250 SIZE 1000\r\n', '250-mx.test\r\n250 SIZE 1000\r\n'],
    ['as the last line', '250-mx.test\r\n250-SIZE 1000\r\n250 PIPECONNECT\r\n', '250-mx.test\r\n250 SIZE 1000\r\n'],
    ['right after the domain line', '250-mx.test\r\n250-X_PIPE_CONNECT\r\n250-PIPELINING\r\n250 HELP\r\n', '250-mx.test\r\n250-PIPELINING\r\n250 HELP\r\n'],
    ['both spellings, lower case, LF only', '250-mx.test\n250-pipeconnect\n250-8BITMIME\n250 x_pipe_connect\n', '250-mx.test\n250 8BITMIME\n'],
  ];
  for (const [name, reply, expected] of cases) {
    it(`strips the keyword ${name}, for every split into segments`, async () => {
      for (const parts of splits(greeting + reply)) {
        expect(await through(new PipeconnectStripper(), parts)).toBe(greeting + expected);
      }
    });
  }

  it('sends a reply that arrived in one segment on as one chunk (one socket write, not one per line)', async () => {
    const t = new PipeconnectStripper();
    const chunks: string[] = [];
    t.on('data', (c: Buffer) => chunks.push(c.toString('latin1')));
    t.write(Buffer.from('250-mx.test\r\n250-PIPELINING\r\n250-PIPECONNECT\r\n250-8BITMIME\r\n250 HELP\r\n'));
    await new Promise((r) => setImmediate(r));
    expect(chunks).toEqual(['250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 HELP\r\n']);
  });

  it('leaves PIPELINING and look-alikes alone', async () => {
    const r = '250-mx\r\n250-PIPELINING\r\n250-PIPECONNECTX\r\n250 CHUNKING\r\n';
    expect(await through(new PipeconnectStripper(), [r])).toBe(r);
  });

  it('passes everything untouched once stopped (message data, TLS)', async () => {
    const t = new PipeconnectStripper();
    const out: Buffer[] = [];
    t.on('data', (c: Buffer) => out.push(c));
    t.write(Buffer.from('250-mx\r\n'));
    t.stop();
    t.write(Buffer.from('250 PIPECONNECT\r\n'));
    t.end();
    await new Promise((r) => t.on('end', r));
    expect(Buffer.concat(out).toString()).toBe('250-mx\r\n250 PIPECONNECT\r\n');
  });
});

describe('CommandWatcher', () => {
  const stopsAt = (parts: string[]): number => {
    let stoppedAfter = -1;
    const w = new CommandWatcher(() => (stoppedAfter = seen));
    let seen = 0;
    for (const p of parts) {
      seen++;
      w.write(Buffer.from(p));
    }
    return stoppedAfter;
  };
  it('stops at DATA, BDAT or STARTTLS at a line start, split or not', () => {
    expect(stopsAt(['EHLO x\r\n', 'MAIL FROM:<a@b>\r\n', 'DATA\r\n'])).toBe(3);
    expect(stopsAt(['EHLO x\r\nSTART', 'TLS\r\n'])).toBe(2);
    expect(stopsAt(['EHLO x\r\nBDAT 100 LAST\r\n'])).toBe(1);
    expect(stopsAt(['EHLO x\r\n', 'D', 'A', 'T', 'A', '\r\n'])).toBe(6);
  });
  it('does not stop on arguments that contain the words', () => {
    expect(stopsAt(['EHLO data.example\r\n', 'MAIL FROM:<starttls@x>\r\n', 'RCPT TO:<DATA@x>\r\n'])).toBe(-1);
    expect(stopsAt(['NOOP DATA\r\n', 'DATAX\r\n'])).toBe(-1);
  });
});
