// The live counts admission and the stress window decide from: sessions held or relayed, per client, and the stress state; exact, since one thread owns them.

/** Plain counters on the decision thread: every engine thread's connections are decided here, so the limits are exact. */
export class LiveCounts {
  /** Sessions held or relayed now. */
  sessions = 0;
  /** Sessions in the window now. */
  held = 0;
  stressed = false;
  stressChanges = 0;
  private readonly byClient = new Map<string, number>();

  /** Sessions from this address now. */
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
  /** Enters or leaves stress; true when this call changed it (the caller logs the change). */
  setStressed(on: boolean): boolean {
    if (this.stressed === on) return false;
    this.stressed = on;
    this.stressChanges++;
    return true;
  }
}
