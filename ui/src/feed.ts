// The verdict stream's bookkeeping, apart from the DOM: a bounded backlog of recent records, batches for the next paint, filters, and what was dropped. Pure.

/** One session summary line from the event stream (GET /v1/events/stream). */
export interface VerdictRecord {
  readonly seq: number;
  readonly at: string;
  readonly listener: string;
  readonly client: string;
  readonly clientAddress?: string;
  readonly verdict: string;
  readonly cause: string;
  readonly action?: string;
  readonly talkedAfterMs?: number;
  readonly earlyBytes?: string;
  /** A protocol test caught the client (verdict protocol, or action log): the offending line, escaped. */
  readonly protocolTest?: string;
  readonly protocolBytes?: string;
  readonly server?: string;
  readonly durationMs: number;
  readonly [k: string]: unknown;
}

export interface Filter {
  /** '' = any. */
  readonly verdict: string;
  /** Substring of the client (address:port); '' = any. */
  readonly client: string;
  /** '' = any. */
  readonly listener: string;
}

export const NO_FILTER: Filter = { verdict: '', client: '', listener: '' };

export function matches(r: VerdictRecord, f: Filter): boolean {
  if (f.verdict && r.verdict !== f.verdict) return false;
  if (f.listener && r.listener !== f.listener) return false;
  if (f.client && !r.client.toLowerCase().includes(f.client.trim().toLowerCase())) return false;
  return true;
}

/** What the table should do at the next paint. */
export interface Batch {
  /** Records to add at the top, oldest first (already filtered). */
  readonly rows: VerdictRecord[];
  /** Set when the whole table must be redrawn (filter changed, or more arrived than the table holds). */
  readonly replace: boolean;
}

/**
 * Records arrive at any rate (2,000 a second in a bot wave); the page paints a few times a
 * second. In between they only go into two bounded arrays: the backlog (the latest `keep`
 * records, for re-filtering) and the pending list for the next paint, which never holds more
 * than the table shows. Whatever falls out of the pending list unpainted is counted as dropped.
 */
export class VerdictFeed {
  private backlog: VerdictRecord[] = [];
  private pending: VerdictRecord[] = [];
  private needReplace = false;
  private filter: Filter = NO_FILTER;
  paused = false;
  received = 0;
  /** Matching records that were never painted because newer ones pushed them out first. */
  dropped = 0;
  /** Records received while paused (painted or not when it resumes). */
  receivedWhilePaused = 0;

  constructor(
    readonly tableRows = 200,
    readonly keep = 2000,
  ) {}

  get currentFilter(): Filter {
    return this.filter;
  }

  push(r: VerdictRecord): void {
    this.received++;
    this.backlog.push(r);
    if (this.backlog.length > this.keep * 1.5) this.backlog = this.backlog.slice(this.backlog.length - this.keep);
    if (this.paused) {
      this.receivedWhilePaused++;
      return;
    }
    if (!matches(r, this.filter)) return;
    this.pending.push(r);
    if (this.pending.length > this.tableRows * 2) this.trimPending();
  }

  private trimPending(): void {
    const over = this.pending.length - this.tableRows;
    if (over <= 0) return;
    this.pending = this.pending.slice(over);
    this.dropped += over;
    this.needReplace = true;
  }

  setFilter(f: Filter): void {
    this.filter = f;
    this.refill();
  }

  setPaused(p: boolean): void {
    if (this.paused === p) return;
    this.paused = p;
    if (!p) {
      this.receivedWhilePaused = 0;
      this.refill();
    }
  }

  /** Redraw from the backlog: the latest matching records, as many as the table shows. */
  private refill(): void {
    const hits: VerdictRecord[] = [];
    for (let i = this.backlog.length - 1; i >= 0 && hits.length < this.tableRows; i--) {
      const r = this.backlog[i]!;
      if (matches(r, this.filter)) hits.push(r);
    }
    this.pending = hits.reverse();
    this.needReplace = true;
  }

  /** The batch for this paint; empty rows and replace false when there is nothing to do. */
  take(): Batch {
    if (this.paused) return { rows: [], replace: false };
    this.trimPending();
    const batch = { rows: this.pending, replace: this.needReplace };
    this.pending = [];
    this.needReplace = false;
    return batch;
  }
}
