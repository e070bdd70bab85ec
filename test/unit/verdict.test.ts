// Pure session words: evidence escaping, early-talk causes, the summary's words for engine failures.

import { describe, expect, it } from 'vitest';
import { earlyTalkCause, VERDICTS } from '../../src/proxy/verdict.js';
import { escapeBytes } from '../../src/util/escapeBytes.js';

describe('escapeBytes', () => {
  it('escapes like postscreen and caps at 100 bytes', () => {
    expect(escapeBytes(Buffer.from('EHLO x\r\n'))).toBe('EHLO x\\r\\n');
    expect(escapeBytes(Buffer.from([0, 0xff, 0x5c, 0x09]))).toBe('\\x00\\xff\\\\\\t');
    expect(escapeBytes(Buffer.alloc(500, 0x41))).toBe('A'.repeat(100));
  });
});

describe('earlyTalkCause', () => {
  it('names what the engine did to an early talker', () => {
    expect(earlyTalkCause('drop')).toBe('dropped');
    expect(earlyTalkCause('reject')).toBe('rejected');
  });
  it('every verdict word is listed once', () => {
    expect(new Set(VERDICTS).size).toBe(VERDICTS.length);
  });
});
