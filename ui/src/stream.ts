// The live verdict stream: GET /v1/events/stream read through fetch() (so the token travels in a header), parsed, and reconnected with Last-Event-ID after a break.

import { AuthError, headers, token } from './api.js';
import type { VerdictRecord } from './feed.js';
import { SseParser } from './sse.js';

export type StreamState = 'connecting' | 'live' | 'retrying' | 'stopped';

export interface StreamHandle {
  stop(): void;
}

/** Streams the summaries after `since` (the lastSeq of GET /v1/events): nothing is missed between the two. */
export function openStream(
  since: number,
  onRecord: (r: VerdictRecord) => void,
  onState: (s: StreamState, detail?: string) => void,
  onAuth: (e: AuthError) => void,
): StreamHandle {
  let stopped = false;
  let controller: AbortController | undefined;
  const parser = new SseParser();
  parser.lastId = String(since);
  let backoff = 500;

  const loop = async (): Promise<void> => {
    while (!stopped) {
      controller = new AbortController();
      onState('connecting');
      try {
        const h = headers({ accept: 'text/event-stream' });
        if (parser.lastId !== undefined) h['last-event-id'] = parser.lastId;
        const res = await fetch('/v1/events/stream', { headers: h, cache: 'no-store', signal: controller.signal });
        if (res.status === 401) {
          onAuth(new AuthError(token.get() !== null));
          stopped = true;
          break;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        onState('live');
        backoff = 500;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const ev of parser.feed(value)) {
            if (ev.event !== 'session') continue;
            onRecord(JSON.parse(ev.data) as VerdictRecord);
          }
        }
        if (!stopped) onState('retrying', 'the stream ended');
      } catch (e) {
        if (stopped) break;
        onState('retrying', e instanceof Error ? e.message : String(e));
      }
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 10_000);
    }
    onState('stopped');
  };
  void loop();
  return {
    stop() {
      stopped = true;
      controller?.abort();
    },
  };
}
