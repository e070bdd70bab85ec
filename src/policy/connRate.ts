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
// Memory: at most `maxClients` clients (100,000 by default: 8–9 MB measured), in fixed slots: typed
// arrays hold each slot's TAT and its place in a least-recently-seen list, and one Map finds a
// client's slot. A connection moves its client to the front; a new client at a full table takes
// the slot of the one seen least recently. Every step is O(1) (a JS Map's own insertion order is
// not used for this: taking its first key after many deletes walks over their holes).
// An evicted client starts afresh; that forgives at most one burst, and needs 100,000 other
// clients seen since its last connection.

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
  /** Client → slot. */
  private readonly slots = new Map<RateKey, number>();
  /** Per slot: the client, its TAT in units (ms × perClient), and its neighbours in the list (-1: none). */
  private readonly keys: RateKey[] = [];
  private readonly tat: Float64Array;
  private readonly newer: Int32Array;
  private readonly older: Int32Array;
  /** The most and the least recently seen slots (-1: empty). */
  private head = -1;
  private tail = -1;
  private settings: RateSettings;

  constructor(
    settings: RateSettings,
    private readonly now: () => number = monotonicMs,
    readonly maxClients = RATE_MAX_CLIENTS,
  ) {
    this.settings = { ...settings };
    this.tat = new Float64Array(maxClients);
    this.newer = new Int32Array(maxClients);
    this.older = new Int32Array(maxClients);
  }

  /** Clients remembered now (≤ maxClients). */
  get size(): number {
    return this.slots.size;
  }

  get current(): RateSettings {
    return this.settings;
  }

  /** Counts a connection from `client`: true when it is within the rate, false (not counted) when over it. O(1). */
  admit(client: RateKey): boolean {
    const { perClient, intervalMs } = this.settings;
    const now = this.now() * perClient;
    let slot = this.slots.get(client);
    if (slot === undefined) {
      // A client not seen (or forgotten): its bucket is full, and perClient ≥ 1 lets this one in.
      if (this.slots.size < this.maxClients) slot = this.slots.size;
      else {
        slot = this.tail;
        this.unlink(slot);
        this.slots.delete(this.keys[slot] as RateKey);
      }
      this.keys[slot] = client;
      this.slots.set(client, slot);
      this.tat[slot] = now + intervalMs;
      this.toFront(slot);
      return true;
    }
    if (slot !== this.head) {
      this.unlink(slot);
      this.toFront(slot);
    }
    const tat = Math.max(this.tat[slot] as number, now);
    // Over the rate when this connection would not fit: the bucket holds interval × perClient units.
    if (tat + intervalMs - now > intervalMs * perClient) return false;
    this.tat[slot] = tat + intervalMs;
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
    for (const slot of this.slots.values()) {
      const owedMs = Math.min((this.tat[slot] as number) / prev.perClient - nowMs, next.intervalMs);
      this.tat[slot] = owedMs > 0 ? (nowMs + Math.ceil(owedMs)) * next.perClient : 0;
    }
    this.settings = { ...next };
  }

  private unlink(slot: number): void {
    const newer = this.newer[slot] as number;
    const older = this.older[slot] as number;
    if (newer >= 0) this.older[newer] = older;
    else this.head = older;
    if (older >= 0) this.newer[older] = newer;
    else this.tail = newer;
  }

  private toFront(slot: number): void {
    this.newer[slot] = -1;
    this.older[slot] = this.head;
    if (this.head >= 0) this.newer[this.head] = slot;
    this.head = slot;
    if (this.tail < 0) this.tail = slot;
  }
}

/** The limiter for `settings` (undefined = off), keeping `prev`'s counts when there is one. */
export function connRateFor(prev: ConnRate | undefined, settings: RateSettings | undefined): ConnRate | undefined {
  if (!settings) return undefined;
  if (!prev) return new ConnRate(settings);
  prev.update(settings);
  return prev;
}
