// The last hour in per-second aggregates (sessions by verdict, early talkers, held and relaying counts, backend connect latency): a fixed ring, pure (time is passed in).

import { VERDICTS, type Verdict } from '../proxy/verdict.js';

/** What one second of traffic adds up to. */
interface Slot {
  /** Unix second this slot holds; a slot whose t is not the asked second is stale (a lap old). */
  t: number;
  readonly verdicts: Record<Verdict, number>;
  earlyTalkers: number;
  /** Sampled once in the second (the last sample wins); undefined when etd was not sampling then. */
  held: number | undefined;
  relaying: number | undefined;
  connects: number;
  connectMsSum: number;
  connectMsMax: number;
}

/** The part of a session summary the aggregates use. */
export interface SummaryFacts {
  readonly verdict: Verdict;
  readonly talkedAfterMs?: number;
  readonly connectMs?: number;
}

/** Columns, one value per second, oldest first: the shape charts take as they are. */
export interface HistoryColumns {
  /** Unix seconds. */
  readonly t: number[];
  readonly verdicts: Record<Verdict, number[]>;
  readonly earlyTalkers: number[];
  readonly held: Array<number | null>;
  readonly relaying: Array<number | null>;
  /** Mean and worst upstream connect time of the sessions that ended in that second; null with none. */
  readonly connectMsAvg: Array<number | null>;
  readonly connectMsMax: Array<number | null>;
}

const zeroVerdicts = (): Record<Verdict, number> => Object.fromEntries(VERDICTS.map((v) => [v, 0])) as Record<Verdict, number>;

/**
 * `capacity` seconds of aggregates in a fixed array indexed by second: recording never allocates
 * after the slot exists, and a second nobody recorded in reads as zero sessions.
 */
export class SecondRing {
  private readonly slots: Array<Slot | undefined>;

  constructor(readonly capacity = 3600) {
    if (!Number.isInteger(capacity) || capacity < 2) throw new RangeError(`SecondRing capacity must be an integer ≥ 2 (got ${capacity})`);
    this.slots = new Array<Slot | undefined>(capacity);
  }

  private slot(nowMs: number): Slot {
    const t = Math.floor(nowMs / 1000);
    const i = t % this.capacity;
    let s = this.slots[i];
    if (!s) {
      s = {
        t,
        verdicts: zeroVerdicts(),
        earlyTalkers: 0,
        held: undefined,
        relaying: undefined,
        connects: 0,
        connectMsSum: 0,
        connectMsMax: 0,
      };
      this.slots[i] = s;
    } else if (s.t !== t) {
      s.t = t;
      for (const v of VERDICTS) s.verdicts[v] = 0;
      s.earlyTalkers = 0;
      s.held = undefined;
      s.relaying = undefined;
      s.connects = 0;
      s.connectMsSum = 0;
      s.connectMsMax = 0;
    }
    return s;
  }

  /** A session ended at `nowMs`. */
  record(nowMs: number, s: SummaryFacts): void {
    const slot = this.slot(nowMs);
    slot.verdicts[s.verdict]++;
    if (s.talkedAfterMs !== undefined) slot.earlyTalkers++;
    if (s.connectMs !== undefined) {
      slot.connects++;
      slot.connectMsSum += s.connectMs;
      if (s.connectMs > slot.connectMsMax) slot.connectMsMax = s.connectMs;
    }
  }

  /** The live counts at `nowMs` (called about once a second). */
  sample(nowMs: number, held: number, relaying: number): void {
    const slot = this.slot(nowMs);
    slot.held = held;
    slot.relaying = relaying;
  }

  /**
   * The complete seconds before `nowMs` (the current one is still filling), after `since` when
   * given, at most the last `seconds` of them and never more than the ring holds.
   */
  columns(nowMs: number, opts: { since?: number; seconds?: number } = {}): HistoryColumns {
    const current = Math.floor(nowMs / 1000);
    const span = Math.min(opts.seconds ?? this.capacity - 1, this.capacity - 1);
    let first = current - span;
    if (opts.since !== undefined && opts.since + 1 > first) first = opts.since + 1;
    const out: HistoryColumns = {
      t: [],
      verdicts: Object.fromEntries(VERDICTS.map((v) => [v, [] as number[]])) as Record<Verdict, number[]>,
      earlyTalkers: [],
      held: [],
      relaying: [],
      connectMsAvg: [],
      connectMsMax: [],
    };
    for (let t = first; t < current; t++) {
      const s = this.slots[t % this.capacity];
      const live = s !== undefined && s.t === t ? s : undefined;
      out.t.push(t);
      for (const v of VERDICTS) out.verdicts[v].push(live?.verdicts[v] ?? 0);
      out.earlyTalkers.push(live?.earlyTalkers ?? 0);
      out.held.push(live?.held ?? null);
      out.relaying.push(live?.relaying ?? null);
      const n = live?.connects ?? 0;
      out.connectMsAvg.push(n > 0 ? round2(live!.connectMsSum / n) : null);
      out.connectMsMax.push(n > 0 ? round2(live!.connectMsMax) : null);
    }
    return out;
  }
}

const round2 = (x: number) => Math.round(x * 100) / 100;
