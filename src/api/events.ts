// Recent session verdicts for the API: a fixed-size ring of summaries, and live Server-Sent-Events streams fed from it.

import type { ServerResponse } from 'node:http';
import type { SessionSummary } from '../proxy/protocol.js';

/** One session summary as the API shows it: numbered (for SSE resumption) and time-stamped. */
export type EventRecord = SessionSummary & { readonly seq: number; readonly at: string };

export interface EventQuery {
  /** Only events with a larger sequence number (the last `seq` the caller saw). */
  readonly since?: number;
  /** At most this many, the most recent ones. */
  readonly limit?: number;
  readonly verdict?: string;
  readonly listener?: string;
}

/**
 * The last `capacity` summaries. A fixed array and a write index: pushing never allocates
 * beyond the record itself and never grows, whatever the connection rate.
 */
export class EventRing {
  private readonly buf: Array<EventRecord | undefined>;
  private next = 0;
  private seq = 0;
  private readonly subscribers = new Set<(e: EventRecord) => void>();

  constructor(readonly capacity = 1000) {
    this.buf = new Array<EventRecord | undefined>(capacity);
  }

  /** The sequence number of the latest event (0 before the first). */
  get lastSeq(): number {
    return this.seq;
  }

  get size(): number {
    return Math.min(this.seq, this.capacity);
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  push(summary: SessionSummary): EventRecord {
    const record: EventRecord = { ...summary, seq: ++this.seq, at: new Date().toISOString() };
    this.buf[this.next] = record;
    this.next = (this.next + 1) % this.capacity;
    // Copy first: a subscriber may unsubscribe itself (a dropped slow client) while we iterate.
    for (const fn of [...this.subscribers]) fn(record);
    return record;
  }

  /** Oldest first. */
  recent(q: EventQuery = {}): EventRecord[] {
    const out: EventRecord[] = [];
    const n = this.size;
    const start = (this.next - n + this.capacity) % this.capacity;
    for (let i = 0; i < n; i++) {
      const e = this.buf[(start + i) % this.capacity]!;
      if (q.since !== undefined && e.seq <= q.since) continue;
      if (q.verdict !== undefined && e.verdict !== q.verdict) continue;
      if (q.listener !== undefined && e.listener !== q.listener) continue;
      out.push(e);
    }
    return q.limit !== undefined && out.length > q.limit ? out.slice(out.length - q.limit) : out;
  }

  /** Calls `fn` for each new event; returns the unsubscribe function. */
  subscribe(fn: (e: EventRecord) => void): () => void {
    this.subscribers.add(fn);
    return () => {
      this.subscribers.delete(fn);
    };
  }
}

export interface SseOptions {
  /** Unsent bytes a client may leave queued before it is dropped (it reads too slowly). */
  readonly maxBufferedBytes: number;
  /** A comment line this often keeps proxies from timing out the stream and finds dead peers. */
  readonly heartbeatMs: number;
  /** Replay events after this sequence number first (from Last-Event-ID or ?since=). */
  readonly since?: number;
  readonly verdict?: string;
  readonly listener?: string;
}

export type SseEnd = 'client_closed' | 'too_slow' | 'server_closing';

/**
 * One live event stream on an HTTP response that the caller has taken over (headers not sent yet).
 * The stream ends when the client goes away, when it falls too far behind, or on close().
 */
export class SseStream {
  private unsubscribe: (() => void) | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private ended = false;

  constructor(
    private readonly res: ServerResponse,
    ring: EventRing,
    private readonly opts: SseOptions,
    private readonly onEnd: (why: SseEnd) => void = () => undefined,
  ) {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      // nginx and similar buffer responses unless told not to; events must arrive as they happen.
      'x-accel-buffering': 'no',
    });
    res.write(`retry: 3000\n: etd events; last seq ${ring.lastSeq}\n\n`);
    res.on('close', () => this.end('client_closed'));
    if (opts.since !== undefined) for (const e of ring.recent({ since: opts.since, ...this.filter() })) this.send(e);
    this.unsubscribe = ring.subscribe((e) => this.send(e));
    this.heartbeat = setInterval(() => this.write(': ping\n\n'), opts.heartbeatMs);
    this.heartbeat.unref();
  }

  private filter(): { verdict?: string; listener?: string } {
    return {
      ...(this.opts.verdict !== undefined ? { verdict: this.opts.verdict } : {}),
      ...(this.opts.listener !== undefined ? { listener: this.opts.listener } : {}),
    };
  }

  private send(e: EventRecord): void {
    if (this.opts.verdict !== undefined && e.verdict !== this.opts.verdict) return;
    if (this.opts.listener !== undefined && e.listener !== this.opts.listener) return;
    this.write(`id: ${e.seq}\nevent: session\ndata: ${JSON.stringify(e)}\n\n`);
  }

  private write(text: string): void {
    if (this.ended) return;
    // writableLength is what the kernel has not taken yet: a client that stopped reading makes
    // it grow without bound, so past the limit the client is cut off instead of buffered for.
    if (this.res.writableLength > this.opts.maxBufferedBytes) {
      this.end('too_slow');
      this.res.destroy();
      return;
    }
    this.res.write(text);
  }

  /** Ends the stream from our side (API shutting down). */
  close(): void {
    if (this.ended) return;
    this.end('server_closing');
    this.res.end();
  }

  get closed(): boolean {
    return this.ended;
  }

  private end(why: SseEnd): void {
    if (this.ended) return;
    this.ended = true;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    clearInterval(this.heartbeat);
    this.onEnd(why);
  }
}
