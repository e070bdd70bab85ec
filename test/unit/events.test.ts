// The API's event ring (wrap-around, filters, subscribers) and its SSE streams: cleanup on disconnect, a slow reader dropped.

import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { EventRing, type SseEnd, SseStream } from '../../src/api/events.js';
import type { SessionSummary } from '../../src/proxy/session.js';
import { waitFor } from '../helpers/wait.js';

function summary(id: number, over: Partial<SessionSummary> = {}): SessionSummary {
  return {
    id,
    listener: 'l1',
    client: `192.0.2.1:${1000 + id}`,
    clientAddress: '192.0.2.1',
    verdict: 'passed',
    attempts: 1,
    heldMs: 6000,
    durationMs: 6100,
    bytesFromClient: 10,
    bytesToClient: 20,
    cause: 'client_closed',
    ...over,
  };
}

describe('EventRing', () => {
  it('keeps the last `capacity` events, oldest first, numbered from 1', () => {
    const ring = new EventRing(3);
    expect(ring.recent()).toEqual([]);
    for (let i = 1; i <= 5; i++) ring.push(summary(i));
    expect(ring.size).toBe(3);
    expect(ring.lastSeq).toBe(5);
    expect(ring.recent().map((e) => [e.seq, e.id])).toEqual([
      [3, 3],
      [4, 4],
      [5, 5],
    ]);
    expect(ring.recent({ since: 4 }).map((e) => e.seq)).toEqual([5]);
    expect(ring.recent({ limit: 2 }).map((e) => e.seq)).toEqual([4, 5]);
    expect(typeof ring.recent()[0]!.at).toBe('string');
  });

  it('filters by verdict and listener, and tells subscribers until they unsubscribe', () => {
    const ring = new EventRing(10);
    const seen: number[] = [];
    const off = ring.subscribe((e) => seen.push(e.seq));
    ring.push(summary(1, { verdict: 'early_talker', action: 'drop', talkedAfterMs: 12 }));
    ring.push(summary(2, { listener: 'l2' }));
    off();
    ring.push(summary(3));
    expect(seen).toEqual([1, 2]);
    expect(ring.subscriberCount).toBe(0);
    expect(ring.recent({ verdict: 'early_talker' }).map((e) => e.seq)).toEqual([1]);
    expect(ring.recent({ listener: 'l2' }).map((e) => e.seq)).toEqual([2]);
  });
});

describe('SseStream', () => {
  let server: http.Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
  });

  /** An HTTP server whose every request becomes an SSE stream on `ring`. */
  async function serve(ring: EventRing, maxBufferedBytes: number, ends: SseEnd[]): Promise<number> {
    server = http.createServer((_req, res) => {
      new SseStream(res, ring, { maxBufferedBytes, heartbeatMs: 60_000 }, (why) => ends.push(why));
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return (server.address() as net.AddressInfo).port;
  }

  it('sends events in SSE framing and unsubscribes when the client disconnects', async () => {
    const ring = new EventRing(10);
    const ends: SseEnd[] = [];
    const port = await serve(ring, 1 << 20, ends);
    const client = net.connect({ port, host: '127.0.0.1' });
    let text = '';
    client.on('data', (c: Buffer) => (text += c.toString()));
    client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => ring.subscriberCount === 1, { what: 'subscribed' });
    ring.push(summary(7, { verdict: 'early_talker' }));
    await waitFor(() => text.includes('event: session'), { what: 'event received' });
    expect(text).toMatch(/content-type: text\/event-stream/i);
    const m = /id: 1\nevent: session\ndata: (.*)\n\n/.exec(text);
    expect(JSON.parse(m![1]!)).toMatchObject({ seq: 1, id: 7, verdict: 'early_talker' });

    client.destroy();
    await waitFor(() => ring.subscriberCount === 0, { what: 'cleaned up' });
    expect(ends).toEqual(['client_closed']);
  });

  it('drops a client that stops reading instead of buffering for it without end', async () => {
    const ring = new EventRing(10);
    const ends: SseEnd[] = [];
    const port = await serve(ring, 64 * 1024, ends);
    const client = net.connect({ port, host: '127.0.0.1' });
    client.on('error', () => undefined);
    client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => ring.subscriberCount === 1, { what: 'subscribed' });
    client.pause(); // reads nothing more: the kernel buffers fill, then etd's
    const big = 'x'.repeat(4000);
    // Bounded: kernel socket buffers on loopback hold a few MB at most.
    for (let i = 0; i < 20_000 && ring.subscriberCount > 0; i++) {
      ring.push(summary(i, { earlyBytes: big }));
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    expect(ring.subscriberCount).toBe(0);
    expect(ends).toEqual(['too_slow']);
    client.destroy();
  });
});
