// Once-per-period warnings shared by every engine worker (e.g. a DNSBL zone that refuses queries: one line per zone per hour, not one per worker).

const SLOTS = 512;

function slotOf(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % SLOTS;
}

/** A new gate's memory (the main thread makes it; every worker gets the same buffer). */
export function warnGateBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(SLOTS * 8);
}

/**
 * The gate over `buffer`: true when `key`'s warning is due (none in the last `periodMs`), and
 * then it is marked as logged now, atomically, so exactly one worker logs it. Two keys that
 * share a slot share a period (512 slots; the keys are zones and kinds of warning).
 */
export function warnGate(buffer: SharedArrayBuffer): (key: string, periodMs: number, now: number) => boolean {
  const last = new BigInt64Array(buffer);
  return (key, periodMs, now) => {
    const i = slotOf(key);
    for (;;) {
      const seen = Atomics.load(last, i);
      if (seen !== 0n && now - Number(seen) < periodMs) return false;
      if (Atomics.compareExchange(last, i, seen, BigInt(Math.round(now))) === seen) return true;
    }
  };
}
