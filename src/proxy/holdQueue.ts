// Holds connections for their observation window: one FIFO per window length, one timer for all.
//
// Every connection held with the same window expires in arrival order, so a FIFO per window
// length is always sorted by deadline; a single timer is armed for the earliest head. Cancelling
// (the client talked or hung up) is O(1): the entry is marked dead and skipped when reached.
// Kept behind the `HoldQueue` interface so a native epoll pen can replace it if memory demands.

export interface Holdable {
  /** Called once when the window has elapsed and the entry was not cancelled. */
  onHoldExpired(): void;
}

export interface HoldTicket {
  readonly deadline: number;
}

export interface HoldQueue<T extends Holdable> {
  /** Holds `item` for `windowMs`; returns a ticket to cancel it. */
  add(item: T, windowMs: number): HoldTicket;
  /** Stops holding; the item's onHoldExpired will not be called. Idempotent. */
  cancel(ticket: HoldTicket): void;
  /** Number of entries still held. */
  readonly size: number;
  /** Cancels the timer; pending items are left to the caller. Returns the items still held. */
  close(): T[];
}

class Entry<T> implements HoldTicket {
  constructor(
    /** Cleared on cancel: a dead entry waits in its FIFO until its deadline and must not keep the session alive. */
    public item: T | undefined,
    readonly deadline: number,
    public live: boolean,
  ) {}
}

/** A FIFO with amortised O(1) shift: a head index plus periodic compaction. */
class Fifo<T> {
  private items: Array<Entry<T>> = [];
  private head = 0;
  push(e: Entry<T>): void {
    this.items.push(e);
  }
  peek(): Entry<T> | undefined {
    while (this.head < this.items.length && !(this.items[this.head] as Entry<T>).live) this.advance();
    return this.items[this.head];
  }
  shift(): Entry<T> | undefined {
    const e = this.peek();
    if (e) this.advance();
    return e;
  }
  private advance(): void {
    this.items[this.head] = undefined as unknown as Entry<T>;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
  get empty(): boolean {
    return this.peek() === undefined;
  }
  drain(): Array<Entry<T>> {
    const rest = this.items.slice(this.head).filter((e) => e.live);
    this.items = [];
    this.head = 0;
    return rest;
  }
}

export class TimerHoldQueue<T extends Holdable> implements HoldQueue<T> {
  private readonly queues = new Map<number, Fifo<T>>();
  private timer: NodeJS.Timeout | undefined;
  private armedFor = Infinity;
  private count = 0;
  private readonly fire = () => this.expire();

  constructor(private readonly now: () => number = () => performance.now()) {}

  get size(): number {
    return this.count;
  }

  add(item: T, windowMs: number): HoldTicket {
    let q = this.queues.get(windowMs);
    if (!q) {
      q = new Fifo<T>();
      this.queues.set(windowMs, q);
    }
    const e = new Entry(item, this.now() + windowMs, true);
    q.push(e);
    this.count++;
    if (e.deadline < this.armedFor) this.arm(e.deadline);
    return e;
  }

  cancel(ticket: HoldTicket): void {
    const e = ticket as Entry<T>;
    if (!e.live) return;
    e.live = false;
    e.item = undefined;
    this.count--;
    // The timer stays armed; when it fires it skips dead entries and re-arms for the next live one.
  }

  close(): T[] {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = Infinity;
    const rest: T[] = [];
    for (const q of this.queues.values()) for (const e of q.drain()) rest.push(e.item as T);
    this.queues.clear();
    this.count = 0;
    return rest;
  }

  private arm(deadline: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.armedFor = deadline;
    this.timer = setTimeout(this.fire, Math.max(0, Math.ceil(deadline - this.now())));
  }

  private expire(): void {
    this.timer = undefined;
    this.armedFor = Infinity;
    const now = this.now();
    const due: T[] = [];
    let next = Infinity;
    for (const [windowMs, q] of this.queues) {
      for (let e = q.peek(); e && e.deadline <= now; e = q.peek()) {
        q.shift();
        e.live = false;
        this.count--;
        due.push(e.item as T);
      }
      const head = q.peek();
      if (head) next = Math.min(next, head.deadline);
      else this.queues.delete(windowMs);
    }
    if (next !== Infinity) this.arm(next);
    // Callbacks run after the bookkeeping so they may add or cancel entries safely.
    for (const item of due) item.onHoldExpired();
  }
}
