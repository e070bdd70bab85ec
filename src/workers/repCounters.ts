// The DNSBL counters of several engine workers as one: plain data that crosses threads, and their sum.

import type { ReputationCounters } from '../reputation/lookup.js';

/** ReputationCounters as plain data (maps as entry lists), for a worker's counters message. */
export interface RepCountersData {
  readonly queries: ReadonlyArray<readonly [string, number]>;
  readonly hits: ReadonlyArray<readonly [string, number]>;
  readonly timeouts: ReadonlyArray<readonly [string, number]>;
  readonly errors: ReadonlyArray<readonly [string, number]>;
  readonly refused: ReadonlyArray<readonly [string, number]>;
  readonly overflow: number;
  readonly scored: number;
  readonly refusedClients: number;
  readonly allowlistedClients: number;
  readonly fromPeers: number;
}

const MAPS = ['queries', 'hits', 'timeouts', 'errors', 'refused'] as const;
const NUMS = ['overflow', 'scored', 'refusedClients', 'allowlistedClients', 'fromPeers'] as const;

export function repData(c: ReputationCounters): RepCountersData {
  return {
    queries: [...c.queries],
    hits: [...c.hits],
    timeouts: [...c.timeouts],
    errors: [...c.errors],
    refused: [...c.refused],
    overflow: c.overflow,
    scored: c.scored,
    refusedClients: c.refusedClients,
    allowlistedClients: c.allowlistedClients,
    fromPeers: c.fromPeers,
  };
}

/** The sum of `own` (this thread's) and every data set in `others`, as fresh counters. */
export function sumCounters(own: ReputationCounters, others: ReadonlyArray<RepCountersData | ReputationCounters>): ReputationCounters {
  const out = {
    queries: new Map(own.queries),
    hits: new Map(own.hits),
    timeouts: new Map(own.timeouts),
    errors: new Map(own.errors),
    refused: new Map(own.refused),
    overflow: own.overflow,
    scored: own.scored,
    refusedClients: own.refusedClients,
    allowlistedClients: own.allowlistedClients,
    fromPeers: own.fromPeers,
  };
  for (const o of others) {
    for (const k of MAPS) for (const [key, n] of o[k]) out[k].set(key, (out[k].get(key) ?? 0) + n);
    for (const k of NUMS) out[k] += o[k];
  }
  return out;
}
