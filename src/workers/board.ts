// The counters every engine worker shares, in one SharedArrayBuffer: the limits, the stress window and the servers' session counts, counted across all workers.
//
// Owner: the main thread creates the board; each worker writes only its own row and the shared
// totals (with Atomics), so nothing on the accept path waits on another thread. A worker that
// dies leaves its row behind: the main thread subtracts it from the totals (`clearWorker`).
//
// Layout (Int32): [last session id (64 bits), totals: sessions, held, relaying, stressed, stressChanges, …]
//                 [per worker: sessions, held, relaying, unreported summaries, …]
//                 [per server slot: total, then active per worker]
//                 [per worker: perClient buckets]
//
// The per-client limit counts by a hash of the address into PER_CLIENT_BUCKETS buckets per
// worker: the count of an address is the sum of its bucket over the workers. Two addresses that
// share a bucket share a count, so a false refusal needs their summed connections to reach
// limits.perClient (50 by default) — rare with 131,072 buckets.

// Ints 0–1 are the 64-bit session id counter.
const TOTALS = 8;
const T_SESSIONS = 2;
const T_HELD = 3;
const T_RELAYING = 4;
const T_STRESSED = 5;
const T_STRESS_CHANGES = 6;
const ROW = 8;
const R_SESSIONS = 0;
const R_HELD = 1;
const R_RELAYING = 2;
/** Summary lines this worker has sent that the main thread has not taken in yet. */
const R_UNREPORTED = 4;
/** Distinct server names the board can count (slots are never reused while etd runs). */
export const SERVER_SLOTS = 1024;
export const PER_CLIENT_BUCKETS = 1 << 17;

export interface WorkerRow {
  readonly sessions: number;
  readonly held: number;
  readonly relaying: number;
}

/** FNV-1a of the address text: the per-client bucket. */
export function addressBucket(address: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < address.length; i++) {
    h ^= address.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  // murmur3's finalizer: addresses differ in their last characters, which FNV alone spreads poorly.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) & (PER_CLIENT_BUCKETS - 1);
}

export class Board {
  readonly cells: Int32Array;
  private readonly ids: BigInt64Array;
  private readonly rowsAt = TOTALS;
  private readonly serversAt: number;
  private readonly bucketsAt: number;

  private constructor(
    readonly buffer: SharedArrayBuffer,
    readonly workers: number,
  ) {
    this.cells = new Int32Array(buffer);
    this.ids = new BigInt64Array(buffer, 0, 1);
    this.serversAt = TOTALS + workers * ROW;
    this.bucketsAt = this.serversAt + SERVER_SLOTS * (1 + workers);
  }

  /** A new board for `workers` workers (the main thread). */
  static create(workers: number): Board {
    const ints = TOTALS + workers * ROW + SERVER_SLOTS * (1 + workers) + workers * PER_CLIENT_BUCKETS;
    return new Board(new SharedArrayBuffer(ints * 4), workers);
  }

  /** The same board in a worker thread. */
  static attach(buffer: SharedArrayBuffer, workers: number): Board {
    return new Board(buffer, workers);
  }

  get sessions(): number {
    return Atomics.load(this.cells, T_SESSIONS);
  }
  get held(): number {
    return Atomics.load(this.cells, T_HELD);
  }
  get relaying(): number {
    return Atomics.load(this.cells, T_RELAYING);
  }
  get stressed(): boolean {
    return Atomics.load(this.cells, T_STRESSED) === 1;
  }
  get stressChanges(): number {
    return Atomics.load(this.cells, T_STRESS_CHANGES);
  }

  /** The next session id: one sequence for all workers (and restarts), in arrival order. */
  nextId(): number {
    return Number(Atomics.add(this.ids, 0, 1n)) + 1;
  }

  /** Enters (true) or leaves (false) stress; true for the one worker whose call changed it. */
  setStressed(on: boolean): boolean {
    const changed = Atomics.compareExchange(this.cells, T_STRESSED, on ? 0 : 1, on ? 1 : 0) === (on ? 0 : 1);
    if (changed) Atomics.add(this.cells, T_STRESS_CHANGES, 1);
    return changed;
  }

  /** Connections from this address held or relayed now, on all workers. */
  perClient(address: string): number {
    const b = this.bucketsAt + addressBucket(address);
    let n = 0;
    for (let w = 0; w < this.workers; w++) n += Atomics.load(this.cells, b + w * PER_CLIENT_BUCKETS);
    return n;
  }

  row(worker: number): WorkerRow {
    const r = this.rowsAt + worker * ROW;
    const c = this.cells;
    return { sessions: Atomics.load(c, r + R_SESSIONS), held: Atomics.load(c, r + R_HELD), relaying: Atomics.load(c, r + R_RELAYING) };
  }

  /** Summary lines sent by the workers and not yet taken in by the main thread. */
  get unreported(): number {
    let n = 0;
    for (let w = 0; w < this.workers; w++) n += Atomics.load(this.cells, this.rowsAt + w * ROW + R_UNREPORTED);
    return n;
  }

  /** `n` summary lines of `worker` were sent (positive) or taken in by the main thread (negative). */
  reported(worker: number, n: number): void {
    Atomics.add(this.cells, this.rowsAt + worker * ROW + R_UNREPORTED, n);
  }

  /** A session began (held) on `worker`. */
  started(worker: number, address: string): void {
    const c = this.cells;
    const r = this.rowsAt + worker * ROW;
    Atomics.add(c, T_SESSIONS, 1);
    Atomics.add(c, T_HELD, 1);
    Atomics.add(c, r + R_SESSIONS, 1);
    Atomics.add(c, r + R_HELD, 1);
    Atomics.add(c, this.bucketsAt + worker * PER_CLIENT_BUCKETS + addressBucket(address), 1);
  }

  /** A held session began relaying. */
  relayingNow(worker: number): void {
    const c = this.cells;
    const r = this.rowsAt + worker * ROW;
    Atomics.sub(c, T_HELD, 1);
    Atomics.add(c, T_RELAYING, 1);
    Atomics.sub(c, r + R_HELD, 1);
    Atomics.add(c, r + R_RELAYING, 1);
  }

  /** A session ended (`relayed`: it was relaying, else held). */
  ended(worker: number, address: string, relayed: boolean): void {
    const c = this.cells;
    const r = this.rowsAt + worker * ROW;
    Atomics.sub(c, T_SESSIONS, 1);
    Atomics.sub(c, relayed ? T_RELAYING : T_HELD, 1);
    Atomics.sub(c, r + R_SESSIONS, 1);
    Atomics.sub(c, r + (relayed ? R_RELAYING : R_HELD), 1);
    Atomics.sub(c, this.bucketsAt + worker * PER_CLIENT_BUCKETS + addressBucket(address), 1);
  }

  /** A dead worker's row out of the totals (main thread, after the worker exited); returns what it had. */
  clearWorker(worker: number): WorkerRow {
    const c = this.cells;
    const r = this.rowsAt + worker * ROW;
    const had = this.row(worker);
    Atomics.sub(c, T_SESSIONS, had.sessions);
    Atomics.sub(c, T_HELD, had.held);
    Atomics.sub(c, T_RELAYING, had.relaying);
    Atomics.store(c, r + R_SESSIONS, 0);
    Atomics.store(c, r + R_HELD, 0);
    Atomics.store(c, r + R_RELAYING, 0);
    Atomics.store(c, r + R_UNREPORTED, 0);
    for (let slot = 0; slot < SERVER_SLOTS; slot++) Atomics.store(c, this.serversAt + slot * (1 + this.workers) + 1 + worker, 0);
    c.fill(0, this.bucketsAt + worker * PER_CLIENT_BUCKETS, this.bucketsAt + (worker + 1) * PER_CLIENT_BUCKETS);
    return had;
  }

  /** A server's session counts on all workers: active now, total since start. */
  server(slot: number): { active: number; total: number } {
    const i = this.serversAt + slot * (1 + this.workers);
    let active = 0;
    for (let w = 0; w < this.workers; w++) active += Atomics.load(this.cells, i + 1 + w);
    return { active, total: Atomics.load(this.cells, i) };
  }

  /** `worker`'s sessions on the server in `slot` changed by `delta` (a new one also counts in its total). */
  serverActive(worker: number, slot: number, delta: number): void {
    const i = this.serversAt + slot * (1 + this.workers);
    Atomics.add(this.cells, i + 1 + worker, delta);
    if (delta > 0) Atomics.add(this.cells, i, delta);
  }
}
