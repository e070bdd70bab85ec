// The live counts admission and the stress window decide from: this thread's own (one worker), or every worker's (the shared board).

import type { Board } from './board.js';

export interface LiveCounts {
  /** Sessions held or relayed now. */
  readonly sessions: number;
  /** Sessions in the window now. */
  readonly held: number;
  /** Sessions from this address now. */
  perClient(address: string): number;
  started(address: string): void;
  relaying(): void;
  ended(address: string, relayed: boolean): void;
  readonly stressed: boolean;
  /** Enters or leaves stress; true when this call changed it (the caller logs the change). */
  setStressed(on: boolean): boolean;
  readonly stressChanges: number;
}

/** One engine (workers: 1): plain counters on this thread. */
export class LocalCounts implements LiveCounts {
  sessions = 0;
  held = 0;
  stressed = false;
  stressChanges = 0;
  private readonly byClient = new Map<string, number>();

  perClient(address: string): number {
    return this.byClient.get(address) ?? 0;
  }
  started(address: string): void {
    this.sessions++;
    this.held++;
    this.byClient.set(address, (this.byClient.get(address) ?? 0) + 1);
  }
  relaying(): void {
    this.held--;
  }
  ended(address: string, relayed: boolean): void {
    this.sessions--;
    if (!relayed) this.held--;
    const n = (this.byClient.get(address) ?? 1) - 1;
    if (n > 0) this.byClient.set(address, n);
    else this.byClient.delete(address);
  }
  setStressed(on: boolean): boolean {
    if (this.stressed === on) return false;
    this.stressed = on;
    this.stressChanges++;
    return true;
  }
}

/** Engine worker `worker` of several: the totals of all workers, on the shared board. */
export class BoardCounts implements LiveCounts {
  constructor(
    private readonly board: Board,
    /** -1 on the main thread, which only reads. */
    private readonly worker: number,
  ) {}

  get sessions(): number {
    return this.board.sessions;
  }
  get held(): number {
    return this.board.held;
  }
  get stressed(): boolean {
    return this.board.stressed;
  }
  get stressChanges(): number {
    return this.board.stressChanges;
  }
  perClient(address: string): number {
    return this.board.perClient(address);
  }
  started(address: string): void {
    this.board.started(this.worker, address);
  }
  relaying(): void {
    this.board.relayingNow(this.worker);
  }
  ended(address: string, relayed: boolean): void {
    this.board.ended(this.worker, address, relayed);
  }
  setStressed(on: boolean): boolean {
    return this.board.setStressed(on);
  }
}
