// The pure rise/fall decision (exact transitions) and the SMTP reply reader the health probe uses.

import { describe, expect, it } from 'vitest';
import { type HealthState, initialHealth, nextHealth } from '../../src/backend/health.js';
import { detailOf, type ReplyOutcome, ReplyReader } from '../../src/backend/smtpCheck.js';

/** Feeds a sequence of results ('o' ok, 'x' failed) and returns the 1-based checks where health flipped. */
function transitions(seq: string, rise: number, fall: number, start: HealthState = initialHealth(true)): Array<[number, 'up' | 'down']> {
  let s = start;
  const out: Array<[number, 'up' | 'down']> = [];
  [...seq].forEach((ch, i) => {
    const next = nextHealth(s, ch === 'o', rise, fall);
    if (next.healthy !== s.healthy) out.push([i + 1, next.healthy ? 'up' : 'down']);
    s = next;
  });
  return out;
}

describe('nextHealth (rise 2, fall 3)', () => {
  it('an up server goes down on exactly the 3rd consecutive failure', () => {
    expect(transitions('xx', 2, 3)).toEqual([]);
    expect(transitions('xxx', 2, 3)).toEqual([[3, 'down']]);
    expect(transitions('xxxxxx', 2, 3)).toEqual([[3, 'down']]);
  });

  it('a success resets the failure streak (strictly consecutive)', () => {
    expect(transitions('xxoxx', 2, 3)).toEqual([]);
    expect(transitions('xxoxxx', 2, 3)).toEqual([[6, 'down']]);
  });

  it('a down server comes up on exactly the 2nd consecutive success', () => {
    expect(transitions('xxxo', 2, 3)).toEqual([[3, 'down']]);
    expect(transitions('xxxoo', 2, 3)).toEqual([
      [3, 'down'],
      [5, 'up'],
    ]);
    expect(transitions('xxxoxoo', 2, 3)).toEqual([
      [3, 'down'],
      [7, 'up'],
    ]);
  });

  it('starting down (passive detection) needs rise successes', () => {
    expect(transitions('o', 2, 3, initialHealth(false))).toEqual([]);
    expect(transitions('oo', 2, 3, initialHealth(false))).toEqual([[2, 'up']]);
  });

  it('a flapping server that alternates never reaches either threshold', () => {
    expect(transitions('oxoxoxoxoxoxox', 2, 3)).toEqual([]);
    expect(transitions('xoxoxoxoxoxo', 2, 2, initialHealth(false))).toEqual([]);
  });

  it('the flapping pattern of the integration test', () => {
    expect(transitions('oxxoxxxooxoo', 2, 3)).toEqual([
      [7, 'down'],
      [9, 'up'],
    ]);
  });

  it('keeps exact streak counts', () => {
    let s = initialHealth(true);
    s = nextHealth(s, false, 2, 3);
    expect(s).toEqual({ healthy: true, okStreak: 0, failStreak: 1 });
    s = nextHealth(s, false, 2, 3);
    s = nextHealth(s, false, 2, 3);
    expect(s).toEqual({ healthy: false, okStreak: 0, failStreak: 3 });
    s = nextHealth(s, true, 2, 3);
    expect(s).toEqual({ healthy: false, okStreak: 1, failStreak: 0 });
    s = nextHealth(s, true, 2, 3);
    expect(s).toEqual({ healthy: true, okStreak: 2, failStreak: 0 });
  });
});

describe('nextHealth edge thresholds', () => {
  it('rise 1 / fall 1 flips on every differing result', () => {
    expect(transitions('xoxo', 1, 1)).toEqual([
      [1, 'down'],
      [2, 'up'],
      [3, 'down'],
      [4, 'up'],
    ]);
  });
  it('fall 10 needs ten in a row', () => {
    expect(transitions('x'.repeat(9), 2, 10)).toEqual([]);
    expect(transitions('x'.repeat(10), 2, 10)).toEqual([[10, 'down']]);
  });
});

/** Feeds `text` to a fresh reader cut into pieces of `size` bytes; returns the first non-'more' outcome. */
function read(text: string, size = Infinity): ReplyOutcome {
  const r = new ReplyReader();
  const buf = Buffer.from(text, 'latin1');
  for (let i = 0; i < buf.length; i += Math.min(size, buf.length)) {
    const out = r.feed(buf.subarray(i, i + Math.min(size, buf.length)));
    if (out.kind !== 'more') return out;
  }
  return { kind: 'more' };
}

describe('ReplyReader', () => {
  it('reads a one-line reply', () => {
    const out = read('220 mx.test ESMTP\r\n');
    expect(out).toMatchObject({ kind: 'reply', code: 220, lines: ['220 mx.test ESMTP'] });
  });

  it('reads a multi-line EHLO reply cut into 1-byte segments', () => {
    const text = '250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n';
    for (const size of [1, 2, 3, 5, 7, 1000]) {
      const out = read(text, size);
      expect(out).toMatchObject({
        kind: 'reply',
        code: 250,
        lines: ['250-mx.test', '250-PIPELINING', '250-SIZE 10240000', '250 8BITMIME'],
      });
    }
  });

  it('accepts bare LF and a bare code as the last line', () => {
    expect(read('220-a\n220\n')).toMatchObject({ kind: 'reply', code: 220, lines: ['220-a', '220'] });
  });

  it('waits for the end of the reply', () => {
    expect(read('220-first\r\n220-second\r\n')).toEqual({ kind: 'more' });
    expect(read('220 no newline yet')).toEqual({ kind: 'more' });
  });

  it('returns the bytes after the final line', () => {
    const out = read('220 hi\r\n250 unsolicited\r\n');
    expect(out.kind).toBe('reply');
    if (out.kind === 'reply') expect(out.rest.toString()).toBe('250 unsolicited\r\n');
  });

  it('recognises another protocol from its first bytes, without a newline', () => {
    expect(read('SSH-2.0-OpenSSH_9.2p1')).toEqual({ kind: 'garbage', line: 'SSH-2.0-OpenSSH_9.2p1' });
    expect(read('\x16\x03\x01\x02\x00')).toMatchObject({ kind: 'garbage' });
    expect(read('HTTP/1.1 400 Bad Request\r\n')).toMatchObject({ kind: 'garbage' });
    expect(read('2200 x\r\n')).toMatchObject({ kind: 'garbage' });
  });

  it('flags a garbage line after a 220- continuation, and a continuation with another code', () => {
    expect(read('220-welcome\r\nhello there\r\n')).toEqual({ kind: 'garbage', line: 'hello there' });
    expect(read('220-welcome\r\n250 ok\r\n')).toEqual({ kind: 'garbage', line: '250 ok' });
    expect(read('220-welcome\r\n25', 1)).toMatchObject({ kind: 'garbage' });
  });

  it('flags an endless line', () => {
    expect(read(`220 ${'x'.repeat(5000)}`).kind).toBe('garbage');
  });
});

describe('detailOf', () => {
  it('escapes control bytes and stays within 100 characters', () => {
    expect(detailOf('421 Try again later')).toBe('421 Try again later');
    expect(detailOf('\x16\x03\x01')).toBe('\\x16\\x03\\x01');
    expect(detailOf('\x00'.repeat(100)).length).toBeLessThanOrEqual(100);
    expect(detailOf('y'.repeat(300))).toHaveLength(100);
  });
});
