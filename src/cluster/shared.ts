// Shared state over Redis (ioredis): lookups beside the hold, batched writes, access-list pub/sub plus periodic full sync, up/down with write-back.
//
// The local state (ClientCache, AccessLists, SQLite) stays the first level and the fallback;
// this object never sits on the decision path:
// - lookup() sends GET+PTTL and calls back later; while Redis is down it answers nothing at once
//   (the hold runs its normal course). Commands are never queued while down
//   (enableOfflineQueue false) and each one is bounded by cluster.redis.commandTimeout.
// - writes go to a bounded queue flushed as one pipeline every few milliseconds; while Redis is
//   down they stay queued (absolute expiries, so a late write keeps the right TTL) and are
//   written back when it returns. If Redis lost its data meanwhile (meta:epoch changed), the whole
//   local state is written back, so every gateway agrees again.
// - access-list changes are published on <keyPrefix>events and the whole hash is read back every
//   cluster.syncInterval (and on every reconnect), so a missed message heals.

import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { Redis } from 'ioredis';
import type { Cidr } from '../config/cidr.js';
import type { ClusterConfig } from '../config/schema.js';
import { describeError } from '../errors.js';
import {
  type AccessField,
  decodeAccessFields,
  decodeDnsblValue,
  decodeEventText,
  decodeVerdictValue,
  RejectGate,
  type RejectKind,
} from './decode.js';
import {
  ACCESS_HASH,
  type AccessChange,
  type AccessListName,
  accessDeletions,
  accessUpdates,
  type CacheVerdict,
  EPOCH_KEY,
  encodeEvent,
  encodeVerdict,
  eventChannel,
  sharedKey,
  type ValueKind,
} from './keys.js';
import { type LinkState, linkStep } from './link.js';
import { redisOptions, redisWhere } from './options.js';

/** What SharedState needs from the local state: read it for write-back and sync, and apply what peers learnt. */
export interface LocalState {
  /** A verdict a peer recorded: keep it locally until `expires` (ms since epoch). */
  adoptCache(key: string, kind: CacheVerdict, expires: number): void;
  /** Live local cache entries (for write-back after Redis lost its data). */
  cacheEntries(): Iterable<{ key: string; kind: CacheVerdict; expires: number }>;
  /** The runtime access entries (canonical cidr text → list): a live read-only view, not a copy. */
  runtimeAccess(): ReadonlyMap<string, AccessListName>;
  /** Apply a peer's access change (list undefined: delete) to the lists and the local store. */
  applyAccess(change: AccessChange): void;
  /**
   * Apply part of a sync. The sync's changes come in parts, one turn of the event loop each; the
   * part with `end` (default true) completes the store and tells the access-change listeners and the log
   * once for the whole sync, even when a part before it failed.
   */
  applyAccessBatch(changes: readonly AccessChange[], end?: boolean): void;
}

export interface SharedLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

type Op =
  | {
      readonly t: 'value';
      readonly kind: ValueKind;
      readonly key: string;
      readonly value: string;
      readonly expires: number;
      readonly nx?: boolean;
    }
  | {
      readonly t: 'access';
      readonly cidr: string;
      readonly list: AccessListName | undefined;
      readonly publish: boolean;
      readonly nx?: boolean;
    };

export type LookupResult = 'pass' | 'deny' | 'miss' | 'skipped' | 'error';
export type ErrorOp = 'connect' | 'lookup' | 'write' | 'sync' | 'subscribe';

/** Queued writes kept while Redis is down; beyond it the oldest go (counted in `dropped`). */
const MAX_QUEUE = 100_000;
/** Ops per pipeline: ioredis takes ~25 µs to build one command, so 100 keep a batch to a few ms of the event loop. */
const BATCH = 100;
const DROP_CHUNK = 1000;
/** Writes wait this long to share one pipeline (a TCP write costs far more than a command). */
const FLUSH_MS = 20;
/** Under load, lookups wait at most this long to share an MGET (against a window of seconds). */
const LOOKUP_GAP_MS = 2;
/** Hash fields asked per HSCAN: each reply is small (no command near the timeout), decoded and applied in its own turn. */
const SCAN_COUNT = 2000;
/** Changes of a sync applied per turn of the event loop at most (a few ms each: the API and sessions go on between). */
const APPLY_CHUNK = 1000;
/** Local cache entries written back after Redis lost its data (the most recent first are not known: a cap). */
const WRITE_BACK_MAX = 200_000;

export interface ClusterStatus {
  readonly where: string;
  readonly state: LinkState;
  readonly connected: boolean;
  readonly since: string;
  readonly lastError: string | null;
  /** Round trip of the last full sync (ms); null before the first. */
  readonly lagMs: number | null;
  readonly lastSyncAt: string | null;
  readonly pendingWrites: number;
  readonly droppedWrites: number;
  readonly writtenBack: number;
  readonly errors: Readonly<Record<ErrorOp, number>>;
  readonly lookups: Readonly<Record<LookupResult, number>>;
  /** Peer data skipped (malformed, oversized, or its apply failed), per kind. */
  readonly rejected: Readonly<Record<RejectKind, number>>;
}

/**
 * The local state with every method that applies a peer's change (apply*, adopt*) run under its
 * own guard: one bad change is counted and skipped, the next ones still apply, and nothing a
 * peer sends throws out of a Redis handler. A Proxy, so methods LocalState gains are covered too.
 */
export function guardedLocal(local: LocalState, failed: (method: string, e: unknown) => void): LocalState {
  return new Proxy(local, {
    get(target, prop, receiver) {
      const v: unknown = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      const f = v as (...args: unknown[]) => unknown;
      if (typeof prop !== 'string' || !/^(apply|adopt)/.test(prop)) return f.bind(target);
      return (...args: unknown[]) => {
        try {
          return f.apply(target, args);
        } catch (e) {
          failed(prop, e);
          return undefined;
        }
      };
    },
  });
}

export class SharedState {
  readonly node = `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  private client: Redis | undefined;
  private sub: Redis | undefined;
  private state: LinkState = 'connecting';
  private everUp = false;
  private sinceMs = Date.now();
  private lastError: string | null = null;
  private lagMs: number | null = null;
  private lastSyncAt: number | null = null;
  private epoch: string | undefined;
  private queue: Op[] = [];
  /** Lookups asked in this turn of the event loop, sent together. */
  private lastLookupAt = -Infinity;
  private asked: Array<{ readonly key: string; readonly take: (raw: unknown, now: number) => void; readonly failed: () => void }> = [];
  /** The batch being written now (a full sync must not undo it before it lands). */
  private inflight: readonly Op[] = [];
  private flushTimer: NodeJS.Timeout | undefined;
  private flushing = false;
  private syncTimer: NodeJS.Timeout | undefined;
  /** A sync in progress (it spans many turns), and whether another was asked for meanwhile. */
  private syncing = false;
  private syncAgain = false;
  private stopped = false;
  /** Local access changes by prefix → sequence number; a full sync started before it leaves the prefix alone. */
  private readonly accessSeq = new Map<string, number>();
  private seq = 0;
  /** The prefixes of the shared hash that were local at the last complete sync, parsed: the next sync does not parse them again. */
  private knownPrefixes: ReadonlyMap<string, Cidr> = new Map();
  dropped = 0;
  writtenBack = 0;
  readonly errors: Record<ErrorOp, number> = { connect: 0, lookup: 0, write: 0, sync: 0, subscribe: 0 };
  readonly lookups: Record<LookupResult, number> = { pass: 0, deny: 0, miss: 0, skipped: 0, error: 0 };
  /** Skipped peer data per kind, and the once-a-minute warning about it. */
  readonly rejects = new RejectGate();
  private readonly local: LocalState;

  constructor(
    private readonly config: ClusterConfig,
    local: LocalState,
    private readonly log: SharedLog,
  ) {
    this.local = guardedLocal(local, (method, e) =>
      this.reject(method.startsWith('adopt') ? 'cache' : 'access', `applying it failed (${method}): ${describeError(e)}`),
    );
  }

  /** Peer data skipped: counted, and warned about at most once a minute per kind. */
  private reject(kind: RejectKind, reason: string): void {
    const n = this.rejects.note(kind, Date.now());
    if (n === undefined) return;
    this.log.warn(
      { kind, skipped: n, total: this.rejects.counts[kind], reason },
      `cluster peer sent a malformed entry (${kind}): skipped (${n} since the last warning, etd_cluster_rejected_total); another etd version or a foreign writer shares the Redis prefix. This one: ${reason}`,
    );
  }

  get up(): boolean {
    return this.state === 'up';
  }

  /** Starts connecting in the background; never throws and never waits for Redis. */
  start(): void {
    const opts = redisOptions(this.config);
    const client = new Redis(opts);
    this.client = client;
    client.on('ready', () => void this.onReady());
    client.on('error', (e: Error) => this.noteError('connect', e));
    client.on('close', () => this.change(this.state === 'up' ? 'lost' : 'failed'));
    // The subscriber may queue its SUBSCRIBE until connected; ioredis re-subscribes after a reconnect.
    const sub = client.duplicate({ enableOfflineQueue: true });
    this.sub = sub;
    sub.on('error', (e: Error) => this.noteError('subscribe', e));
    sub.on('message', (_channel: string, text: string) => this.onMessage(text));
    sub.subscribe(eventChannel(this.config.redis.keyPrefix)).catch((e: unknown) => this.noteError('subscribe', e));
    this.syncTimer = setInterval(() => void this.sync(true), this.config.syncIntervalMs);
    this.syncTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.syncTimer) clearInterval(this.syncTimer);
    if (this.flushTimer) clearTimeout(this.flushTimer);
    // A last flush when up, bounded by the command timeout; what is left is in the local store anyway.
    if (this.up && this.queue.length > 0) await this.flushNow().catch(() => undefined);
    this.sub?.disconnect();
    this.client?.disconnect();
  }

  /**
   * Asks Redis what peers learnt about a cache key; `done` runs later with the verdict and its
   * expiry, or not at all (miss, down, error). Never blocks: while Redis is down it returns at once.
   */
  lookup(key: string, done: (kind: CacheVerdict, expires: number) => void): void {
    if (!this.client || !this.up) {
      this.lookups.skipped++;
      return;
    }
    this.ask(
      sharedKey('cache', key),
      (raw, now) => {
        const d = decodeVerdictValue(raw);
        if (d !== undefined && !d.ok) this.reject('cache', `${key}: ${d.reason}`);
        const v = d?.ok ? d.value : undefined;
        if (v === undefined || v.expires <= now) {
          this.lookups.miss++;
          return;
        }
        this.lookups[v.kind]++;
        this.local.adoptCache(key, v.kind, v.expires);
        done(v.kind, v.expires);
      },
      () => this.lookups.error++,
    );
  }

  /**
   * Reads a value of another kind that a peer shared with `put` (e.g. DNSBL answers): `done` runs
   * later with it, or not at all (absent, down, error). Batched with the cache lookups.
   */
  get(kind: ValueKind, key: string, done: (value: string) => void): void {
    if (!this.client || !this.up) return;
    this.ask(
      sharedKey(kind, key),
      (raw) => {
        if (raw === null || raw === undefined) return;
        // The receiver decodes it again (it may be another thread); here it is counted when bad.
        const d = kind === 'dnsbl' ? decodeDnsblValue(raw) : decodeVerdictValue(raw);
        if (d === undefined || !d.ok) {
          this.reject(kind, `${key}: ${d?.reason ?? 'absent'}`);
          return;
        }
        done(raw as string);
      },
      () => undefined,
    );
  }

  /** Shares a value of another kind until `expires` (ms since epoch), batched like the cache writes. */
  put(kind: ValueKind, key: string, value: string, expires: number): void {
    this.enqueue({ t: 'value', kind, key, value, expires });
  }

  private ask(key: string, take: (raw: unknown, now: number) => void, failed: () => void): void {
    // Lookups go out together as one MGET (one write, one read: the TCP write costs more than
    // the command). Alone, a lookup goes at once; under load, at most one MGET per LOOKUP_GAP_MS.
    this.asked.push({ key, take, failed });
    if (this.asked.length > 1) return;
    const wait = this.lastLookupAt + LOOKUP_GAP_MS - performance.now();
    if (wait > 0) setTimeout(() => this.sendLookups(), wait);
    else setImmediate(() => this.sendLookups());
  }

  private sendLookups(): void {
    const asked = this.asked;
    this.asked = [];
    this.lastLookupAt = performance.now();
    const c = this.client;
    if (!c || !this.up) {
      this.lookups.skipped += asked.length;
      return;
    }
    c.mget(asked.map((a) => a.key)).then(
      (values) => {
        const now = Date.now();
        asked.forEach((a, i) => {
          try {
            a.take(values[i], now);
          } catch (e) {
            this.log.warn({ err: describeError(e) }, 'cluster: a lookup callback threw');
          }
        });
      },
      (e: unknown) => {
        for (const a of asked) a.failed();
        this.noteError('lookup', e);
      },
    );
  }

  /** A verdict learnt here: shared with PX = what is left of `expires`. */
  recordCache(key: string, kind: CacheVerdict, expires: number): void {
    this.enqueue({ t: 'value', kind: 'cache', key, value: encodeVerdict(kind, expires), expires });
  }

  /** A runtime access change made through this gateway's API: stored in the shared hash and announced. */
  accessChanged(cidr: string, list: AccessListName | undefined): void {
    this.accessSeq.set(cidr, ++this.seq);
    this.enqueue({ t: 'access', cidr, list, publish: true });
  }

  status(): ClusterStatus {
    return {
      where: redisWhere(this.config),
      state: this.state,
      connected: this.up,
      since: new Date(this.sinceMs).toISOString(),
      lastError: this.lastError,
      lagMs: this.lagMs,
      lastSyncAt: this.lastSyncAt === null ? null : new Date(this.lastSyncAt).toISOString(),
      pendingWrites: this.queue.length,
      droppedWrites: this.dropped,
      writtenBack: this.writtenBack,
      errors: { ...this.errors },
      lookups: { ...this.lookups },
      rejected: { ...this.rejects.counts },
    };
  }

  // ---- link ---------------------------------------------------------------------------------

  private change(event: 'ready' | 'lost' | 'failed'): void {
    if (this.stopped) return;
    const step = linkStep(this.state, event, this.everUp);
    if (step.state !== this.state) this.sinceMs = Date.now();
    this.state = step.state;
    const where = redisWhere(this.config);
    if (step.info) this.log.info({ redis: where }, 'cluster: connected to Redis; sharing state');
    if (step.warn === 'down')
      this.log.warn(
        { redis: where, lastError: this.lastError },
        'cluster: Redis is down; serving from local state, writes are kept for when it returns',
      );
    if (step.warn === 'unreachable')
      this.log.warn(
        { redis: where, lastError: this.lastError },
        'cluster: cannot reach Redis; serving from local state and retrying with backoff',
      );
    if (step.warn === 'up')
      this.log.warn(
        { redis: where, pendingWrites: this.queue.length },
        'cluster: Redis is up again; writing back what was learnt meanwhile',
      );
  }

  private async onReady(): Promise<void> {
    const c = this.client;
    if (!c || this.stopped) return;
    try {
      // Which data set is this? A changed (or new) epoch means Redis lost what it had.
      const fresh = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
      const created = (await c.set(EPOCH_KEY, fresh, 'NX')) === 'OK';
      const current = created ? fresh : ((await c.get(EPOCH_KEY)) ?? fresh);
      const lost = created || (this.epoch !== undefined && this.epoch !== current);
      const joining = this.epoch === undefined;
      this.epoch = current;
      this.change('ready');
      this.everUp = true;
      if (lost || joining) await this.queueWriteBack(lost);
    } catch (e) {
      this.noteError('sync', e);
      this.change('ready');
      this.everUp = true;
    }
    await this.flushNow().catch((e: unknown) => this.noteError('write', e));
    await this.sync();
  }

  /**
   * `all`: Redis lost its data: write every local runtime access entry and live cache entry.
   * Otherwise (this gateway joins a running cluster): add its runtime access entries the shared
   * hash does not have yet (HSETNX: a peer's newer entry wins).
   */
  private async queueWriteBack(all: boolean): Promise<void> {
    let n = 0;
    // Cache writes still queued are in the local cache too (same or later expiry): written once, below.
    if (all) this.queue = this.queue.filter((op) => op.t !== 'value' || op.kind !== 'cache');
    for (const [cidr, list] of this.local.runtimeAccess()) {
      this.enqueue({ t: 'access', cidr, list, publish: all, nx: !all }, true);
      n++;
    }
    if (all) {
      for (const e of this.local.cacheEntries()) {
        if (n >= WRITE_BACK_MAX) break;
        this.enqueue(
          { t: 'value', kind: 'cache', key: e.key, value: encodeVerdict(e.kind, e.expires), expires: e.expires, nx: true },
          true,
        );
        // A large cache is queued a slice per turn of the event loop: sessions go on meanwhile.
        if (++n % 2000 === 0) await new Promise((r) => setImmediate(r));
      }
    }
    this.writtenBack += n;
    if (n > 0) this.log.info({ entries: n, reason: all ? 'redis_lost_data' : 'joining' }, `cluster: writing back ${n} local entries`);
  }

  private noteError(op: ErrorOp, e: unknown): void {
    this.errors[op]++;
    this.lastError = `${op}: ${describeError(e)}`;
    this.log.debug({ op, err: describeError(e) }, 'cluster: Redis error');
  }

  // ---- writes -------------------------------------------------------------------------------

  private enqueue(op: Op, quiet = false): void {
    if (this.queue.length >= MAX_QUEUE) {
      // The oldest go, a chunk at a time (shifting one per write would cost O(queue) each).
      this.queue.splice(0, DROP_CHUNK);
      this.dropped += DROP_CHUNK;
    }
    this.queue.push(op);
    if (!quiet || this.queue.length === 1) this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushTimer || this.flushing || !this.up || this.stopped) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.flushNow().catch((e: unknown) => this.noteError('write', e));
    }, FLUSH_MS);
  }

  /** Writes the queue as pipelines of BATCH ops, one after the other; a failed batch goes back to the front. */
  private async flushNow(): Promise<void> {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.queue.length > 0 && this.up && this.client) {
        const batch = this.queue.splice(0, BATCH);
        this.inflight = batch;
        const p = this.client.pipeline();
        const now = Date.now();
        const channel = eventChannel(this.config.redis.keyPrefix);
        for (const op of batch) {
          if (op.t === 'value') {
            const px = op.expires - now;
            if (px <= 0) continue;
            const k = sharedKey(op.kind, op.key);
            if (op.nx) p.set(k, op.value, 'PX', px, 'NX');
            else p.set(k, op.value, 'PX', px);
          } else {
            if (op.list === undefined) p.hdel(ACCESS_HASH, op.cidr);
            else if (op.nx) p.hsetnx(ACCESS_HASH, op.cidr, op.list);
            else p.hset(ACCESS_HASH, op.cidr, op.list);
            if (op.publish) p.publish(channel, encodeEvent({ from: this.node, kind: 'access', cidr: op.cidr, list: op.list }));
          }
        }
        try {
          const res = await p.exec();
          const failed = res?.find(([err]) => err);
          if (failed) this.noteError('write', failed[0]);
        } catch (e) {
          // Nothing or part of it was written: all of it again later (every op is idempotent).
          this.noteError('write', e);
          this.queue.unshift(...batch);
          return;
        }
        if (this.queue.length > 0) await new Promise((r) => setImmediate(r));
      }
    } finally {
      this.inflight = [];
      this.flushing = false;
      if (this.queue.length > 0) this.scheduleFlush();
    }
  }

  // ---- access sync --------------------------------------------------------------------------

  private onMessage(text: string): void {
    // Whatever arrives on the channel, nothing throws out of this handler (ioredis would turn it into an uncaught exception).
    try {
      const d = decodeEventText(text);
      if (!d.ok) {
        this.reject('event', d.reason);
        return;
      }
      const e = d.value;
      if (e.from === this.node) return;
      // A change made here now, like one through the API: a sync reading or applying meanwhile
      // leaves the prefix alone (what it read may be older); the next sync reconciles it as usual.
      this.accessSeq.set(e.cidr, ++this.seq);
      this.local.applyAccess({ cidr: e.cidr, list: e.list });
    } catch (e) {
      this.reject('event', `handling it failed: ${describeError(e)}`);
    }
  }

  /**
   * Reads the shared hash and makes the local runtime entries equal to it (locally newer changes
   * excepted). Never two at once: one asked for during another runs right after it, except the
   * interval's (`skipIfBusy`): a sync slower than cluster.syncInterval is not followed by
   * another at once, for ever.
   */
  private async sync(skipIfBusy = false): Promise<void> {
    if (this.syncing) {
      if (!skipIfBusy) this.syncAgain = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.syncAgain = false;
        await this.syncOnce();
      } while (this.syncAgain && !this.stopped);
    } finally {
      this.syncing = false;
    }
  }

  /**
   * One sync, page by page: each HSCAN page is decoded, compared with the local entries and
   * applied in its own turn while the next page is on its way; the deletions (local prefixes the
   * hash does not hold) once the whole hash is read. The last part tells the listeners and the log.
   */
  private async syncOnce(): Promise<void> {
    const c = this.client;
    if (!c || !this.up || this.stopped) return;
    const startedSeq = this.seq;
    // Prefixes whose local change is queued or being written now keep the local value...
    const skip = new Set<string>();
    for (const op of [...this.queue, ...this.inflight]) if (op.t === 'access') skip.add(op.cidr);
    // ... and so do those changed here (API, a peer's event) after the read started.
    const newer = (ch: AccessChange): boolean => (this.accessSeq.get(ch.cidr) ?? 0) > startedSeq;
    // Live, not a copy: each page is compared with the entries as they are then.
    const local = this.local.runtimeAccess();
    // The local prefixes the hash holds (for the deletions, and the next sync's known prefixes).
    const seen = new Map<string, Cidr>();
    const parts = { sent: false };
    let readMs = 0;
    const scan = (cursor: string): Promise<[string, unknown]> => {
      const t = performance.now();
      const p = c.hscan(ACCESS_HASH, cursor, 'COUNT', SCAN_COUNT).then((r) => {
        readMs += performance.now() - t;
        return r as [string, unknown];
      });
      // Awaited after the current page is applied: a failure meanwhile is not an unhandled rejection.
      p.catch(() => undefined);
      return p;
    };
    try {
      // HSCAN, not HGETALL: a few thousand fields per command, well inside the command timeout.
      let next: Promise<[string, unknown]> | undefined = scan('0');
      while (next !== undefined) {
        const [cursor, flat]: [string, unknown] = await next;
        next = cursor === '0' ? undefined : scan(cursor);
        // Only valid fields, by canonical prefix, go on; the others are counted.
        const page = new Map<string, AccessField>();
        const rejected: string[] = [];
        decodeAccessFields(flat, page, rejected, this.knownPrefixes);
        for (const reason of rejected) this.reject('access', reason);
        const updates = accessUpdates(local, page, skip);
        // Decoding and applying a page are a turn each: sessions and the API go on between.
        await new Promise((r) => setImmediate(r));
        if (this.stopped) return;
        await this.applyParts(updates, false, newer, parts);
        if (this.stopped) return;
        // Only what is local now needs remembering (the deletions are of local prefixes): so
        // however many fields a writer puts in the hash, this stays within access.maxEntries.
        for (const [cidr, f] of page) if (local.has(cidr)) seen.set(cidr, f.parsed);
        // The next page may have arrived already: a turn for the rest first.
        if (next !== undefined) await new Promise((r) => setImmediate(r));
      }
    } catch (e) {
      this.noteError('sync', e);
      // What was applied stays (it came from the hash); the listeners and the log still hear of it.
      if (parts.sent) this.local.applyAccessBatch([], true);
      return;
    }
    this.lagMs = Math.round(readMs * 100) / 100;
    this.lastSyncAt = Date.now();
    this.knownPrefixes = seen;
    const deletions = accessDeletions(local, seen, skip);
    if (deletions.length > 0 || parts.sent) await this.applyParts(deletions, true, newer, parts);
    for (const [cidr, s] of [...this.accessSeq]) if (s <= startedSeq) this.accessSeq.delete(cidr);
  }

  /**
   * Applies changes APPLY_CHUNK per turn, leaving out those `newer` says were changed here
   * meanwhile; `end`: the last part ends the sync (sent even when empty). A part that throws is
   * counted (guardedLocal) and the next still apply.
   */
  private async applyParts(
    changes: readonly AccessChange[],
    end: boolean,
    newer: (ch: AccessChange) => boolean,
    parts: { sent: boolean },
  ): Promise<void> {
    for (let i = 0; i < changes.length || (end && i === 0); i += APPLY_CHUNK) {
      if (i > 0) await new Promise((r) => setImmediate(r));
      if (this.stopped) return;
      const last = i + APPLY_CHUNK >= changes.length;
      const part = changes.slice(i, i + APPLY_CHUNK).filter((ch) => !newer(ch));
      if (part.length === 0 && !(end && last)) continue;
      this.local.applyAccessBatch(part, end && last);
      parts.sent = !(end && last);
    }
  }
}
