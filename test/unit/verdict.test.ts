// Pure session decisions: early-talk actions, evidence escaping, greeting end detection.

import { describe, expect, it } from 'vitest';
import { earlyTalkAction, escapeBytes, findGreetingEnd, replyCode } from '../../src/proxy/verdict.js';

describe('earlyTalkAction', () => {
  it('maps config actions', () => {
    expect(earlyTalkAction('drop')).toBe('drop');
    expect(earlyTalkAction('reject')).toBe('reject');
    expect(earlyTalkAction('log')).toBe('pass');
  });
});

describe('escapeBytes', () => {
  it('escapes like postscreen and caps at 100 bytes', () => {
    expect(escapeBytes(Buffer.from('EHLO x\r\n'))).toBe('EHLO x\\r\\n');
    expect(escapeBytes(Buffer.from([0, 0xff, 0x5c, 0x09]))).toBe('\\x00\\xff\\\\\\t');
    expect(escapeBytes(Buffer.alloc(500, 0x41))).toBe('A'.repeat(100));
  });
});

describe('findGreetingEnd', () => {
  it('finds a one-line greeting', () => {
    const r = findGreetingEnd('', Buffer.from('220 mx ESMTP\r\n'));
    expect(r.end).toBe(14);
  });
  it('waits for the final line of a multi-line greeting, across chunks', () => {
    let r = findGreetingEnd('', Buffer.from('220-mx hello\r\n220-more'));
    expect(r.end).toBe(-1);
    r = findGreetingEnd(r.carry, Buffer.from(' text\r\n22'));
    expect(r.end).toBe(-1);
    r = findGreetingEnd(r.carry, Buffer.from('0 done\r\nEXTRA'));
    expect(r.end).toBe(8);
  });
  it('treats a non-conforming line as the end (garbage is passed on, not waited for)', () => {
    expect(findGreetingEnd('', Buffer.from('hello\n')).end).toBe(6);
  });
  it('reads reply codes', () => {
    expect(replyCode('421 busy')).toBe('421');
    expect(replyCode('junk')).toBeUndefined();
  });
});
