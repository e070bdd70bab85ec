// I/O: the DNSBL/DNSWL lookups of client addresses through Node's resolver (c-ares) — cache, single flight, bound, counters.
//
// One query per configured zone, all in parallel. Answers are cached per client address and
// zone, for the answer's TTL clamped to [minTtl, maxTtl] (a negative answer: minTtl; no answer:
// not cached). Concurrent lookups of one client share one set of queries. At most `maxInFlight`
// queries are out at once: over it a zone counts 0 and `overflow` is counted.

import { Resolver } from 'node:dns/promises';
import type { Logger } from 'pino';
import { clampAnswerTtl, decodeDnsblValue } from '../cluster/decode.js';
import { normalizeAddress } from '../config/cidr.js';
import type { ReputationConfig } from '../config/schema.js';
import { compilePatterns, DEFAULT_MATCH, isRefusedAnswer } from './match.js';
import { queryName } from './query.js';
import { type ReputationList, type Score, scoreOf, settledDecision, type ZoneAnswer } from './score.js';

/** Distinct client addresses kept in the answer cache; the oldest go first past it (a flood of new addresses). */
const CACHE_MAX = 200_000;
/** A refused query (127.255.255.x) is logged once per zone per hour; a timeout once per zone per minute. */
const REFUSED_LOG_MS = 3_600_000;
const TIMEOUT_LOG_MS = 60_000;

interface Cached {
  readonly answer: ZoneAnswer;
  readonly expires: number;
}

/** Counters since start, read by /v1/stats and /metrics. */
export interface ReputationCounters {
  /** Queries sent, per zone. */
  readonly queries: Map<string, number>;
  /** Lookups that matched, per list name. */
  readonly hits: Map<string, number>;
  readonly timeouts: Map<string, number>;
  /** SERVFAIL, REFUSED, a network error: per zone. */
  readonly errors: Map<string, number>;
  /** 127.255.255.x answers (refused query: public resolver, no access), per zone. */
  readonly refused: Map<string, number>;
  /** Queries not sent because maxInFlight were out. */
  overflow: number;
  /** Scores computed for connections, and how many reached the threshold / the allow threshold. */
  scored: number;
  refusedClients: number;
  allowlistedClients: number;
  /** Zone answers taken from other gateways (cluster), before this gateway's own query answered. */
  fromPeers: number;
}

export type QueryObserver = (zone: string, seconds: number, status: ZoneAnswer['status']) => void;

export function compileLists(c: ReputationConfig): ReputationList[] {
  return c.dnsbl.map((d) => ({
    zone: d.zone,
    name: d.name ?? d.zone,
    weight: d.weight,
    patterns: compilePatterns(d.match ?? DEFAULT_MATCH),
  }));
}

const scoreOnly = (r: { score: Score }): Score => r.score;

function bump(m: Map<string, number>, key: string, n = 1): void {
  m.set(key, (m.get(key) ?? 0) + n);
}

/**
 * Where answers are shared with other gateways (the cluster's `dnsbl` values over Redis): a
 * peer's answer, when it comes before the resolver's, settles the zone; this gateway's own
 * answers are offered for as long as they are valid. Never waited on.
 */
export interface AnswerExchange {
  get(key: string, done: (value: string) => void): void;
  put(key: string, value: string, expires: number): void;
}

/** The shared key of one zone's answer for one client. */
export function exchangeKey(address: string, zone: string): string {
  return `${zone}/${address}`;
}

export class Reputation {
  private config!: ReputationConfig;
  private lists: readonly ReputationList[] = [];
  private zones: readonly string[] = [];
  private resolver!: Resolver;
  private readonly cache = new Map<string, Map<string, Cached>>();
  private readonly pending = new Map<string, Promise<{ score: Score; answers: ReadonlyMap<string, ZoneAnswer> }>>();
  private inFlight = 0;
  private readonly lastRefusedLog = new Map<string, number>();
  private readonly lastTimeoutLog = new Map<string, { at: number; since: number }>();
  private readonly observers = new Set<QueryObserver>();
  /** Per client address: who waits for its zones' answers one by one (held sessions deciding early). */
  private readonly watchers = new Map<string, Set<(score: Score) => void>>();
  private sweeper: NodeJS.Timeout | undefined;
  private exchange: AnswerExchange | undefined;
  readonly counters: ReputationCounters = {
    queries: new Map(),
    hits: new Map(),
    timeouts: new Map(),
    errors: new Map(),
    refused: new Map(),
    overflow: 0,
    scored: 0,
    refusedClients: 0,
    allowlistedClients: 0,
    fromPeers: 0,
  };

  constructor(
    config: ReputationConfig,
    private readonly log: Logger,
    /** The clock (ms), for tests of the TTLs. */
    private readonly now: () => number = Date.now,
  ) {
    this.update(config);
  }

  /** True when lists are configured. */
  get enabled(): boolean {
    return this.lists.length > 0;
  }
  get settings(): ReputationConfig {
    return this.config;
  }
  get configuredLists(): readonly ReputationList[] {
    return this.lists;
  }
  /** Queries out now. */
  get queriesInFlight(): number {
    return this.inFlight;
  }

  /** A reload: the new lists and resolvers apply to lookups started from now on; cached answers stay (they are per zone). */
  update(config: ReputationConfig): void {
    const prev = this.config;
    this.config = config;
    this.lists = compileLists(config);
    this.zones = [...new Set(this.lists.map((l) => l.zone))];
    if (!prev || prev.timeoutMs !== config.timeoutMs || prev.resolvers.join() !== config.resolvers.join()) {
      // tries 1: c-ares gives up after one `timeout`, so a query never outlives the lookup that waits for it.
      const r = new Resolver({ timeout: config.timeoutMs, tries: 1 });
      if (config.resolvers.length) r.setServers([...config.resolvers]);
      this.resolver = r;
    }
    if (this.enabled && !this.sweeper) {
      this.sweeper = setInterval(() => this.sweep(), 60_000);
      this.sweeper.unref();
    }
  }

  /** Adds a listener of query latencies (the metrics histogram); returns the function that removes it. */
  onQuery(o: QueryObserver): () => void {
    this.observers.add(o);
    return () => this.observers.delete(o);
  }

  /**
   * The score from the cache when it is final: every zone has a valid answer there, or those
   * missing could not change the decision (settledDecision). Undefined: lookups are needed.
   */
  cached(address: string): Score | undefined {
    const a = normalizeAddress(address);
    if (!this.cache.has(a)) return undefined;
    const s = this.fromCache(a, true)!;
    const c = this.config;
    return settledDecision(this.lists, s, c.threshold, c.allowThreshold) === undefined ? undefined : s;
  }

  /**
   * Calls `f` with the score once a zone's answer settles it (settledDecision) before every zone
   * has answered, so a held session can decide early. The score is computed once per answer,
   * whatever the number of sessions of that client waiting. Returns the unsubscribe.
   */
  watch(address: string, f: (score: Score) => void): () => void {
    const a = normalizeAddress(address);
    let set = this.watchers.get(a);
    if (!set) this.watchers.set(a, (set = new Set()));
    set.add(f);
    return () => {
      set.delete(f);
      if (set.size === 0 && this.watchers.get(a) === set) this.watchers.delete(a);
    };
  }

  /** The score from what the cache holds now, zones without a valid answer counting 0 (the window ended first). */
  partial(address: string): Score {
    return this.fromCache(normalizeAddress(address), true)!;
  }

  /** Looks the client up in every zone (cached answers reused); settles within the timeout, never rejects. */
  lookup(address: string): Promise<Score> {
    return this.fetch(normalizeAddress(address)).then(scoreOnly);
  }

  /** For the API: each zone's answer and the score, looking up what the cache lacks; counts nothing. */
  async inspect(address: string): Promise<{ score: Score; answers: ReadonlyMap<string, ZoneAnswer>; cached: boolean }> {
    const a = normalizeAddress(address);
    const cached = this.fromCache(a, false) !== undefined;
    return { ...(await this.fetch(a)), cached };
  }

  /**
   * Zones that had not answered when a window ended (they counted 0 for that session): logged
   * as timeouts, at most once per zone per minute (the query's own timeout is counted when it comes).
   */
  windowEnded(zones: readonly string[], windowMs: number): void {
    const now = this.now();
    for (const zone of zones) {
      const last = this.lastTimeoutLog.get(zone);
      if (!this.due(TIMEOUT_LOG_MS, now, last?.at)) {
        this.lastTimeoutLog.set(zone, { at: last?.at ?? now, since: (last?.since ?? 0) + 1 });
        continue;
      }
      this.log.warn(
        { zone, windowMs, timeouts: (last?.since ?? 0) + 1 },
        `DNSBL zone ${zone} had not answered by the end of the ${windowMs} ms hold: the lookup counts 0 (a timeout; check the resolver and the zone, or lengthen detection.window)`,
      );
      this.lastTimeoutLog.set(zone, { at: now, since: 0 });
    }
  }

  /** Counts a score that decided a connection (once per connection): hits per list, refusals, allowlistings. */
  decided(decision: 'refuse' | 'allow' | 'window', s: Score): void {
    this.counters.scored++;
    for (const h of s.hits) bump(this.counters.hits, h.name);
    if (decision === 'refuse') this.counters.refusedClients++;
    else if (decision === 'allow') this.counters.allowlistedClients++;
  }

  /** Shares answers with other gateways from now on (undefined: no longer). */
  share(exchange: AnswerExchange | undefined): void {
    this.exchange = exchange;
  }

  stop(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    this.resolver.cancel();
  }

  private fromCache(address: string, partial: boolean): Score | undefined {
    const entry = this.cache.get(address);
    if (!entry && !partial) return undefined;
    const now = this.now();
    const answers = new Map<string, ZoneAnswer>();
    for (const zone of this.zones) {
      const c = entry?.get(zone);
      if (c && c.expires > now) answers.set(zone, c.answer);
      else if (!partial) return undefined;
    }
    return scoreOf(this.lists, answers);
  }

  private fetch(address: string): Promise<{ score: Score; answers: ReadonlyMap<string, ZoneAnswer> }> {
    const running = this.pending.get(address);
    if (running) return running;
    const lists = this.lists;
    const now = this.now();
    const entry = this.cache.get(address);
    const p = Promise.all(
      this.zones.map(async (zone): Promise<[string, ZoneAnswer]> => {
        const c = entry?.get(zone);
        if (c && c.expires > now) return [zone, c.answer];
        this.askPeers(address, zone);
        return [zone, await this.query(address, zone)];
      }),
    ).then((pairs) => {
      this.pending.delete(address);
      const answers = new Map(pairs);
      return { score: scoreOf(lists, answers), answers };
    });
    this.pending.set(address, p);
    return p;
  }

  /** One zone's query: the answer, `none`, or `timeout`/`error`/`overflow` (counted 0, not cached). */
  private query(address: string, zone: string): Promise<ZoneAnswer> {
    const name = queryName(address, zone);
    if (name === undefined) return Promise.resolve({ status: 'error' });
    if (this.inFlight >= this.config.maxInFlight) {
      this.counters.overflow++;
      return Promise.resolve({ status: 'overflow' });
    }
    this.inFlight++;
    bump(this.counters.queries, zone);
    const t0 = performance.now();
    const { timeoutMs, minTtlMs, maxTtlMs } = this.config;
    const resolver = this.resolver;
    return new Promise<ZoneAnswer>((resolve) => {
      let settled = false;
      const settle = (answer: ZoneAnswer, ttlMs: number | undefined) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (ttlMs !== undefined) {
          this.store(address, zone, answer, ttlMs);
          this.exchange?.put(exchangeKey(address, zone), JSON.stringify({ answer, expires: this.now() + ttlMs }), this.now() + ttlMs);
        }
        this.account(zone, answer, (performance.now() - t0) / 1000);
        resolve(answer);
        if (ttlMs !== undefined) this.notify(address);
      };
      // c-ares ends the query after `timeout` itself (tries: 1); this timer makes the bound exact.
      const timer = setTimeout(() => settle({ status: 'timeout' }, undefined), timeoutMs);
      resolver
        .resolve4(name, { ttl: true })
        .then(
          (records) => {
            const ttl = Math.min(...records.map((r) => r.ttl)) * 1000;
            settle({ status: 'answer', addresses: records.map((r) => r.address) }, Math.min(maxTtlMs, Math.max(minTtlMs, ttl)));
          },
          (err: NodeJS.ErrnoException) => {
            if (err.code === 'ENOTFOUND' || err.code === 'ENODATA') settle({ status: 'none' }, minTtlMs);
            else if (err.code === 'ETIMEOUT') settle({ status: 'timeout' }, undefined);
            else settle({ status: 'error' }, undefined);
          },
        )
        .finally(() => this.inFlight--);
    });
  }

  /** A peer's answer for a zone this gateway is about to query: taken when it is still valid and nothing newer is known here. */
  private askPeers(address: string, zone: string): void {
    const x = this.exchange;
    if (!x) return;
    x.get(exchangeKey(address, zone), (raw) => {
      if (this.takeShared(address, zone, raw)) this.counters.fromPeers++;
    });
  }

  private notify(address: string): void {
    const set = this.watchers.get(address);
    if (!set) return;
    const settled = this.cached(address);
    if (settled) for (const w of [...set]) w(settled);
  }

  private store(address: string, zone: string, answer: ZoneAnswer, ttlMs: number): void {
    let entry = this.cache.get(address);
    if (!entry) {
      if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value as string);
      entry = new Map();
      this.cache.set(address, entry);
    }
    entry.set(zone, { answer, expires: this.now() + ttlMs });
  }

  private account(zone: string, answer: ZoneAnswer, seconds: number): void {
    for (const o of this.observers) o(zone, seconds, answer.status);
    const now = this.now();
    if (answer.status === 'timeout') {
      bump(this.counters.timeouts, zone);
      const last = this.lastTimeoutLog.get(zone);
      if (this.due(TIMEOUT_LOG_MS, now, last?.at)) {
        this.log.warn(
          { zone, timeoutMs: this.config.timeoutMs, timeouts: (last?.since ?? 0) + 1 },
          `DNSBL zone ${zone} did not answer within ${this.config.timeoutMs} ms: the lookup counts 0 (check the resolver and the zone)`,
        );
        this.lastTimeoutLog.set(zone, { at: now, since: 0 });
      } else this.lastTimeoutLog.set(zone, { at: last?.at ?? now, since: (last?.since ?? 0) + 1 });
    } else if (answer.status === 'error') {
      bump(this.counters.errors, zone);
    } else if (answer.status === 'answer') {
      const refused = answer.addresses.find(isRefusedAnswer);
      if (refused !== undefined) {
        bump(this.counters.refused, zone);
        if (this.due(REFUSED_LOG_MS, now, this.lastRefusedLog.get(zone))) {
          this.lastRefusedLog.set(zone, now);
          this.log.warn(
            { zone, answer: refused },
            `DNSBL zone ${zone} answered ${refused}: the query was refused (a public or shared resolver, or no access to the list), so it counts as not listed; use your own resolver, not a public one`,
          );
        }
      }
    }
  }

  /** A once-per-period warning is due: `last` is when it was last logged. */
  private due(periodMs: number, now: number, last: number | undefined): boolean {
    return last === undefined || now - last >= periodMs;
  }

  /**
   * A shared answer, when valid and newer than what is known here: stored for its remaining
   * lifetime clamped to [minTtl, maxTtl] (a peer's expiry is data from outside); true when taken.
   */
  private takeShared(address: string, zone: string, raw: string): boolean {
    const d = decodeDnsblValue(raw);
    if (!d.ok) return false; // not ours (another version's data, or garbage): the resolver answers
    const now = this.now();
    const ttlMs = clampAnswerTtl(d.value.expires, now, this.config.minTtlMs, this.config.maxTtlMs);
    if (ttlMs === undefined) return false;
    const known = this.cache.get(address)?.get(zone);
    if (known && known.expires > now) return false;
    this.store(address, zone, d.value.answer, ttlMs);
    this.notify(address);
    return true;
  }

  private sweep(): void {
    const now = this.now();
    for (const [address, entry] of this.cache) {
      for (const [zone, c] of entry) if (c.expires <= now) entry.delete(zone);
      if (entry.size === 0) this.cache.delete(address);
    }
  }
}
