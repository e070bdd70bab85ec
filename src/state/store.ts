// The embedded state store: pass/deny cache entries and runtime access entries in SQLite (WAL),
// written in batches; a failing disk degrades to memory-only with a warning, never a crash.

import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { describeError, EtdError } from '../errors.js';

export type CacheKind = 'pass' | 'deny';
export type AccessList = 'allow' | 'deny';

export interface StoreLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** What the rest of etd needs from persistence. */
export interface StateStore {
  /** Calls `fn` for every cache entry still valid at `now` (ms since epoch), in ascending key order
   *  (SQLite's binary order: the same as JS `<` for the ASCII keys etd writes). */
  loadCache(now: number, fn: (key: string, expires: number, kind: CacheKind) => void): void;
  putCache(key: string, kind: CacheKind, expires: number): void;
  deleteCache(key: string): void;
  /** Deletes expired entries; returns how many. */
  sweep(now: number): number;
  loadAccess(): Array<{ cidr: string; list: AccessList }>;
  putAccess(cidr: string, list: AccessList): void;
  deleteAccess(cidr: string): void;
  /** Many access writes (list undefined = delete) in one transaction. */
  applyAccessBatch(changes: ReadonlyArray<{ cidr: string; list: AccessList | undefined }>): void;
  /** Writes what is queued now (tests, shutdown). */
  flush(): void;
  close(): void;
  /** False once a write failed: etd goes on from memory and says so in /v1/status. */
  readonly healthy: boolean;
  readonly location: string;
}

type Op = { t: 'put'; key: string; kind: CacheKind; expires: number } | { t: 'del'; key: string };

/** How long writes are collected before one transaction commits them. */
const FLUSH_MS = 200;
const FLUSH_OPS = 5000;
const WARN_EVERY_MS = 60_000;
/** Cache entries per query when loading (bounded memory per step; far below SQLite's and V8's string limits). */
const LOAD_CHUNK = 50_000;

export class SqliteStore implements StateStore {
  private readonly db: Database.Database;
  private queue: Op[] = [];
  private timer: NodeJS.Timeout | undefined;
  private lastWarn = 0;
  healthy = true;

  private readonly stmts: {
    put: Database.Statement;
    del: Database.Statement;
    sweep: Database.Statement;
    accessPut: Database.Statement;
    accessDel: Database.Statement;
    loadChunk: Database.Statement;
  };

  constructor(
    readonly location: string,
    private readonly log: StoreLog,
  ) {
    let db: Database.Database | undefined;
    try {
      if (location !== ':memory:') fs.mkdirSync(path.dirname(location), { recursive: true });
      this.db = db = new Database(location);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.exec(`
        CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, kind INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS cache_expires ON cache (expires);
        CREATE TABLE IF NOT EXISTS access (cidr TEXT PRIMARY KEY, list TEXT NOT NULL, added INTEGER NOT NULL) WITHOUT ROWID;
      `);
      this.stmts = {
        put: this.db.prepare('INSERT OR REPLACE INTO cache (key, kind, expires) VALUES (?, ?, ?)'),
        del: this.db.prepare('DELETE FROM cache WHERE key = ?'),
        sweep: this.db.prepare('DELETE FROM cache WHERE expires <= ?'),
        accessPut: this.db.prepare('INSERT OR REPLACE INTO access (cidr, list, added) VALUES (?, ?, ?)'),
        accessDel: this.db.prepare('DELETE FROM access WHERE cidr = ?'),
        // Keys are addresses or prefixes (cacheKey), never with a newline; one that had one is skipped.
        loadChunk: this.db
          .prepare(
            `SELECT group_concat(key || ' ' || (CASE kind WHEN 1 THEN -expires ELSE expires END), char(10))
               FROM (SELECT key, kind, expires FROM cache WHERE key > ? AND +expires > ? AND instr(key, char(10)) = 0 ORDER BY key LIMIT ${LOAD_CHUNK})`,
          )
          .pluck(),
      };
    } catch (e) {
      // Opened, then a pragma or CREATE failed (a full disk): the half-made database must not keep its file open.
      try {
        db?.close();
      } catch {
        /* not open */
      }
      throw new EtdError('ETD_ERR_STATE', `cannot open the state store ${location}: ${describeError(e)}`, {
        hint: 'check state.path, its directory permissions and free space',
        cause: e,
      });
    }
  }

  loadCache(now: number, fn: (key: string, expires: number, kind: CacheKind) => void): void {
    // Measured (bench/cacheLoad.ts): one row at a time from SQLite into JS costs ~1 µs a row,
    // a second or more for a million entries. So each chunk of entries comes as one text,
    // "key ±expires" per line (negative = deny), which is split here: ~4x faster.
    // `+expires` keeps SQLite on the primary key (in key order) instead of the expiry index,
    // which would cost a table lookup per row.
    // (An ORDER BY inside group_concat doubled the query time; SQLite concatenates in the
    // subquery's order, and the next chunk starts after the largest key seen, whatever the order.)
    let after = '';
    for (;;) {
      const chunk = this.stmts.loadChunk.get(after, now) as string | null | undefined;
      if (chunk === null || chunk === undefined || chunk === '') return;
      const from = after;
      let i = 0;
      while (i < chunk.length) {
        let nl = chunk.indexOf('\n', i);
        if (nl < 0) nl = chunk.length;
        const sp = chunk.lastIndexOf(' ', nl);
        const key = chunk.slice(i, sp);
        const v = Number(chunk.slice(sp + 1, nl));
        fn(key, Math.abs(v), v < 0 ? 'deny' : 'pass');
        if (key > after) after = key;
        i = nl + 1;
      }
      if (after === from) return; // no progress: never loop
    }
  }

  putCache(key: string, kind: CacheKind, expires: number): void {
    this.enqueue({ t: 'put', key, kind, expires });
  }

  deleteCache(key: string): void {
    this.enqueue({ t: 'del', key });
  }

  sweep(now: number): number {
    return this.guard('sweep', () => this.stmts.sweep.run(now).changes) ?? 0;
  }

  loadAccess(): Array<{ cidr: string; list: AccessList }> {
    return this.db.prepare('SELECT cidr, list FROM access ORDER BY added').all() as Array<{ cidr: string; list: AccessList }>;
  }

  putAccess(cidr: string, list: AccessList): void {
    this.guard('access write', () => this.stmts.accessPut.run(cidr, list, Date.now()));
  }

  deleteAccess(cidr: string): void {
    this.guard('access delete', () => this.stmts.accessDel.run(cidr));
  }

  applyAccessBatch(changes: ReadonlyArray<{ cidr: string; list: AccessList | undefined }>): void {
    if (changes.length === 0) return;
    const now = Date.now();
    this.guard('access write', () =>
      this.db.transaction(() => {
        for (const c of changes) {
          if (c.list === undefined) this.stmts.accessDel.run(c.cidr);
          else this.stmts.accessPut.run(c.cidr, c.list, now);
        }
      })(),
    );
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const ops = this.queue;
    this.queue = [];
    if (ops.length === 0) return;
    this.guard('cache write', () =>
      this.db.transaction(() => {
        for (const op of ops) {
          if (op.t === 'put') this.stmts.put.run(op.key, op.kind === 'deny' ? 1 : 0, op.expires);
          else this.stmts.del.run(op.key);
        }
      })(),
    );
  }

  close(): void {
    this.flush();
    try {
      this.db.close();
    } catch {
      /* already closed */
    }
  }

  private enqueue(op: Op): void {
    this.queue.push(op);
    if (this.queue.length >= FLUSH_OPS) this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), FLUSH_MS);
      this.timer.unref();
    }
  }

  /** Runs a write; a failure (disk full, read-only) is a rate-limited warning, not a crash. */
  private guard<T>(what: string, fn: () => T): T | undefined {
    try {
      const r = fn();
      if (!this.healthy) {
        this.healthy = true;
        this.log.info({ store: this.location }, 'state store writes work again');
      }
      return r;
    } catch (e) {
      this.healthy = false;
      const now = Date.now();
      if (now - this.lastWarn > WARN_EVERY_MS) {
        this.lastWarn = now;
        this.log.warn({ store: this.location, err: describeError(e) }, `state store ${what} failed; etd keeps proxying from memory`);
      }
      return undefined;
    }
  }
}

/** Opens the store at `location`, or — when that fails — warns and returns an in-memory one. */
export function openStore(location: string, log: StoreLog): StateStore {
  try {
    return new SqliteStore(location, log);
  } catch (e) {
    log.warn(
      { store: location, err: describeError(e) },
      'state store unavailable; the pass cache and runtime access entries will not survive a restart',
    );
    const mem = new SqliteStore(':memory:', log);
    mem.healthy = false;
    return mem;
  }
}
