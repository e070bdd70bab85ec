// The dashboard's pure parts: SSE parsing of a fetch() stream cut anywhere, and the verdict feed's batching, bounding, filtering and pause.

import { describe, expect, it } from 'vitest';
import { matches, VerdictFeed, type VerdictRecord } from '../../ui/src/feed.js';
import { SseParser } from '../../ui/src/sse.js';

const rec = (seq: number, over: Partial<VerdictRecord> = {}): VerdictRecord => ({
  seq,
  at: '2026-01-01T00:00:00.000Z',
  listener: 'smtp',
  client: `192.0.2.${seq % 250}:4000`,
  verdict: seq % 2 ? 'early_talker' : 'passed',
  cause: 'dropped',
  durationMs: 1,
  ...over,
});

describe('SseParser', () => {
  const stream =
    'retry: 3000\n: etd events; last seq 0\n\nid: 1\nevent: session\ndata: {"a":1}\n\n: ping\n\nid: 2\r\nevent: session\r\ndata: line1\r\ndata: line2\r\n\r\n';

  it('parses events, skips comments, joins data lines, remembers the last id', () => {
    const p = new SseParser();
    expect(p.feed(stream)).toEqual([
      { id: '1', event: 'session', data: '{"a":1}' },
      { id: '2', event: 'session', data: 'line1\nline2' },
    ]);
    expect(p.lastId).toBe('2');
  });

  it('gives the same events however the stream is cut, including between \\r and \\n', () => {
    for (let size = 1; size <= 7; size++) {
      const p = new SseParser();
      const out = [];
      for (let i = 0; i < stream.length; i += size) out.push(...p.feed(stream.slice(i, i + size)));
      expect(
        out.map((e) => e.data),
        `chunks of ${size}`,
      ).toEqual(['{"a":1}', 'line1\nline2']);
    }
  });
});

describe('VerdictFeed', () => {
  it('hands over what arrived since the last paint, oldest first', () => {
    const f = new VerdictFeed(5, 50);
    for (let i = 1; i <= 3; i++) f.push(rec(i));
    expect(f.take()).toEqual({ rows: [rec(1), rec(2), rec(3)], replace: false });
    expect(f.take()).toEqual({ rows: [], replace: false });
  });

  it('a burst larger than the table: only the newest tableRows are painted, the rest are counted as dropped, and the table is replaced', () => {
    const f = new VerdictFeed(200, 2000);
    for (let i = 1; i <= 2000; i++) f.push(rec(i));
    const b = f.take();
    expect(b.replace).toBe(true);
    expect(b.rows).toHaveLength(200);
    expect(b.rows[0]!.seq).toBe(1801);
    expect(b.rows.at(-1)!.seq).toBe(2000);
    expect(f.dropped).toBe(1800);
    expect(f.received).toBe(2000);
  });

  it('memory stays bounded whatever the rate', () => {
    const f = new VerdictFeed(10, 100);
    for (let i = 1; i <= 100_000; i++) f.push(rec(i));
    const internal = f as unknown as { backlog: unknown[]; pending: unknown[] };
    expect(internal.backlog.length).toBeLessThanOrEqual(150);
    expect(internal.pending.length).toBeLessThanOrEqual(20);
  });

  it('a filter redraws from the backlog and applies to what comes next', () => {
    const f = new VerdictFeed(3, 100);
    for (let i = 1; i <= 10; i++) f.push(rec(i));
    f.take();
    f.setFilter({ verdict: 'passed', client: '', listener: '' });
    expect(f.take()).toEqual({ rows: [rec(6), rec(8), rec(10)], replace: true });
    f.push(rec(11));
    f.push(rec(12));
    expect(f.take().rows.map((r) => r.seq)).toEqual([12]);
  });

  it('pause stops painting and counts; resume redraws the latest', () => {
    const f = new VerdictFeed(3, 100);
    f.setPaused(true);
    for (let i = 1; i <= 5; i++) f.push(rec(i));
    expect(f.take()).toEqual({ rows: [], replace: false });
    expect(f.receivedWhilePaused).toBe(5);
    f.setPaused(false);
    expect(f.take()).toEqual({ rows: [rec(3), rec(4), rec(5)], replace: true });
    expect(f.receivedWhilePaused).toBe(0);
  });

  it('matches by verdict, listener and a part of the client', () => {
    const r = rec(7, { client: '[2001:db8::7]:25000', listener: 'smtp6' });
    expect(matches(r, { verdict: '', client: '2001:DB8', listener: '' })).toBe(true);
    expect(matches(r, { verdict: 'early_talker', client: '', listener: 'smtp6' })).toBe(true);
    expect(matches(r, { verdict: 'passed', client: '', listener: '' })).toBe(false);
    expect(matches(r, { verdict: '', client: '', listener: 'smtp4' })).toBe(false);
  });
});
