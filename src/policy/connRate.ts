// The per-client connection-rate limit (limits.rate): GCRA over one timestamp per client, in an LRU of bounded size. Pure: the clock is given.
//
// GCRA (the generic cell rate algorithm) is a token bucket written as one number per client, its
// "theoretical arrival time" (TAT): `perClient` connections may come at once, then one more every
// `interval / perClient`; over any long run a client gets at most `perClient` per `interval`. A
// refused connection is not counted, so a client that keeps hammering still gets the rate through
// and no more (the expected refusals of a burst are exactly its size minus what the bucket holds).
//
// Times are whole milliseconds scaled by `perClient` ("units"): one connection costs `interval`
// units and the bucket holds `interval × perClient`, so every comparison is on integers and the
// N-th connection of a burst is never refused by a rounding error. perClient ≤ 10,000 keeps the
// scaled clock exact (< 2^53) for 28 years of uptime.
//
// Memory: at most `maxClients` entries (100,000 by default, ≈ 10 MB): a JS Map keeps insertion
// order, so moving a client to the end on each connection makes the first key the least recently
// seen, evicted in O(1) when a new client arrives at a full table. An evicted client starts afresh;
// that forgives at most one burst, and needs 100,000 other clients seen since its last connection.

import type { Address } from '../config/cidr.js';

export interface RateSettings {
  /** Connections a client may open per interval (1..10,000). */
  readonly perClient: number;
  /** The interval, in ms (> 0). */
  readonly intervalMs: number;
}

/** The most clients the limiter remembers (the LRU's size). */
export const RATE_MAX_CLIENTS = 100_000;

/** The schema's bound on perClient: the scaled clock (ms × perClient) stays an exact integer. */
export const RATE_MAX_PER_CLIENT = 10_000;

/**
 * The key a client is counted under: an IPv4 address (a number) on its own, an IPv6 address by its
 * /64 (a bigint; the two types never compare equal in a Map). A /64 is what one host or one LAN
 * gets, and a bot walks through it for free; an IPv4 /24 is grouped nowhere (large senders share
 * them). IPv4-mapped IPv6 clients arrive here as IPv4 (parseAddress).
 */
export type RateKey = number | bigint;

export function rateKey(a: Address): RateKey {
  return a.family === 4 ? Number(a.value) : a.value >> 64n;
}

/** Whole milliseconds of a monotonic clock. */
const monotonicMs = (): number => Math.floor(performance.now());

export class ConnRate {
  /** Client → TAT in units (ms × perClient); least recently seen first. */
  private readonly tat = new Map<RateKey, number>();
  private settings: RateSettings;

  constructor(
    settings: RateSettings,
    private readonly now: () => number = monotonicMs,
    readonly maxClients = RATE_MAX_CLIENTS,
  ) {
    this.settings = { ...settings };
  }

  /** Clients remembered now (≤ maxClients). */
  get size(): number {
    return this.tat.size;
  }

  get current(): RateSettings {
    return this.settings;
  }

  /** Counts a connection from `client`: true when it is within the rate, false (not counted) when over it. O(1). */
  admit(client: RateKey): boolean {
    const { perClient, intervalMs } = this.settings;
    const now = this.now() * perClient;
    const map = this.tat;
    const prev = map.get(client);
    const tat = prev === undefined || prev < now ? now : prev;
    if (prev !== undefined) map.delete(client);
    else if (map.size >= this.maxClients) map.delete(map.keys().next().value as RateKey);
    // Over the rate when this connection would not fit: the bucket holds interval × perClient units.
    if (tat + intervalMs - now > intervalMs * perClient) {
      map.set(client, prev as number);
      return false;
    }
    map.set(client, tat + intervalMs);
    return true;
  }

  /**
   * New settings (a reload): what each client has used is kept, as time it still owes, converted
   * to the new units and capped at one full new interval (nobody owes more than a burst). O(size).
   */
  update(next: RateSettings): void {
    const prev = this.settings;
    if (prev.perClient === next.perClient && prev.intervalMs === next.intervalMs) return;
    const nowMs = this.now();
    const entries = [...this.tat];
    this.tat.clear();
    for (const [client, units] of entries) {
      const owedMs = Math.min(units / prev.perClient - nowMs, next.intervalMs);
      if (owedMs > 0) this.tat.set(client, (nowMs + Math.ceil(owedMs)) * next.perClient);
    }
    this.settings = { ...next };
  }
}

/** The limiter for `settings` (undefined = off), keeping `prev`'s counts when there is one. */
export function connRateFor(prev: ConnRate | undefined, settings: RateSettings | undefined): ConnRate | undefined {
  if (!settings) return undefined;
  if (!prev) return new ConnRate(settings);
  prev.update(settings);
  return prev;
}
