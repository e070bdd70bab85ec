// Pure access lists: CIDR allow/deny entries from the config and the API; the most specific match wins, at a cost independent of the list's size.

import { type Address, type Cidr, canonicalCidr, parseAddress, parseCidr } from '../config/cidr.js';

export type AccessVerdict = 'allow' | 'deny';

export interface AccessEntry {
  readonly cidr: Cidr;
  readonly list: AccessVerdict;
  /** config entries come back on every reload; runtime entries live in the state store. */
  readonly source: 'config' | 'runtime';
  /** The canonical prefix text (192.0.2.0/24): what the API, the store and Redis use; formatted once. */
  readonly canonical: string;
}

/** One change of a batch: list undefined = delete the runtime entry for that prefix. */
export interface AccessBatchChange {
  readonly cidr: string;
  readonly list: AccessVerdict | undefined;
  /**
   * The prefix already parsed by a border (the cluster decoder), `cidr` being its canonical text:
   * taken as it is, not parsed or formatted again (a sync of 100,000 entries parsed each twice).
   */
  readonly parsed?: Cidr;
}

export interface AccessBatchResult {
  /** What changed, in canonical prefix text (for the store and the log). */
  readonly applied: AccessBatchChange[];
  /** What was refused, with the reason (a bad CIDR, a config prefix, access.maxEntries). */
  readonly rejected: Array<{ readonly cidr: string; readonly reason: string }>;
}

export const DEFAULT_MAX_ENTRIES = 100_000;

type Key = number | string;

/** The mask of the top `n` bits of a 32-bit word (0 ≤ n ≤ 32). */
function topMask(n: number): number {
  return n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0;
}

/** An address as 32-bit words (1 for IPv4, 4 for IPv6): computed once per match. */
function words(family: 4 | 6, value: bigint): number[] {
  if (family === 4) return [Number(value)];
  return [Number(value >> 96n), Number((value >> 64n) & 0xffffffffn), Number((value >> 32n) & 0xffffffffn), Number(value & 0xffffffffn)];
}

/**
 * The hash key of the first `length` bits. Not a bigint: V8 hashes BigInt Map keys so poorly
 * that 20,000 IPv6 prefixes took 1.8 s to insert (measured); numbers and short strings are fast.
 */
function keyOf(w: readonly number[], length: number): Key {
  if (length <= 32) return (w[0]! & topMask(length)) >>> 0;
  let k = '';
  let left = length;
  for (let i = 0; left > 0; i++, left -= 32) k += `${(w[i]! & topMask(Math.min(32, left))) >>> 0}.`;
  return k;
}

/**
 * One hash map per family and prefix length, tried from the longest present length down:
 * a match costs at most one lookup per distinct length in use (≤ 33 for IPv4, ≤ 129 for IPv6),
 * whatever the number of entries. net.BlockList was measured (bench/access.ts): it scans its
 * rules in order (155 µs per check at 10,000 entries) and has no "most specific wins".
 */
class FamilyIndex {
  readonly byLength = new Map<number, Map<Key, AccessEntry[]>>();
  /** The prefix lengths present, longest first. */
  lengths: number[] = [];

  constructor(readonly family: 4 | 6) {}

  key(value: bigint, length: number): Key {
    return keyOf(words(this.family, value), length);
  }

  /** The bucket of exactly this prefix; `k` is its key when the caller has it already. */
  bucket(c: Cidr, create: boolean, k: Key = this.key(c.network, c.prefix)): AccessEntry[] | undefined {
    let m = this.byLength.get(c.prefix);
    if (!m) {
      if (!create) return undefined;
      m = new Map();
      this.byLength.set(c.prefix, m);
      this.lengths = [...this.byLength.keys()].sort((a, b) => b - a);
    }
    let b = m.get(k);
    if (!b && create) {
      b = [];
      m.set(k, b);
    }
    return b;
  }

  drop(c: Cidr): void {
    const m = this.byLength.get(c.prefix);
    if (!m) return;
    m.delete(this.key(c.network, c.prefix));
    if (m.size === 0) {
      this.byLength.delete(c.prefix);
      this.lengths = this.lengths.filter((l) => l !== c.prefix);
    }
  }

  match(a: Address): AccessEntry | undefined {
    if (this.lengths.length === 0) return undefined;
    const w = words(this.family, a.value);
    for (const l of this.lengths) {
      const b = this.byLength.get(l)!.get(keyOf(w, l));
      if (b && b.length > 0) return b[0];
    }
    return undefined;
  }
}

/**
 * The most specific prefix wins, as in a routing table: a /32 allow inside a /8 deny lets that
 * host in. At equal prefix, deny comes first.
 */
export class AccessLists {
  private readonly v4 = new FamilyIndex(4);
  private readonly v6 = new FamilyIndex(6);
  private runtimeCount = 0;
  /** The runtime entries' lists by canonical prefix text, kept as entries come and go (a sync compares against it every few seconds). */
  private readonly runtimeByText = new Map<string, AccessVerdict>();
  private sorted: AccessEntry[] | undefined;
  /** Told once per change or batch of runtime entries (a sync applied in parts tells once at its end). */
  onChange: (() => void) | undefined;
  /** access.maxEntries: runtime entries beyond it are refused. */
  maxEntries: number;

  constructor(
    config: { allow: readonly string[]; deny: readonly string[]; maxEntries?: number },
    runtime: ReadonlyArray<{ cidr: string; list: AccessVerdict }> = [],
  ) {
    this.maxEntries = config.maxEntries ?? DEFAULT_MAX_ENTRIES;
    this.replaceConfig(config);
    this.applyBatch(runtime, 'runtime');
  }

  /** Reload: config entries are replaced, runtime entries stay. */
  replaceConfig(config: { allow: readonly string[]; deny: readonly string[]; maxEntries?: number }): void {
    if (config.maxEntries !== undefined) this.maxEntries = config.maxEntries;
    for (const e of [...this.all()]) if (e.source === 'config') this.take(e);
    // The config loader has already refused a bad CIDR; one here is skipped, never thrown.
    for (const c of config.allow) this.put(c, 'allow', 'config');
    for (const c of config.deny) this.put(c, 'deny', 'config');
  }

  /** The runtime entries' lists by canonical prefix text: live and read-only (no copy; it changes with the lists). */
  runtimeLists(): ReadonlyMap<string, AccessVerdict> {
    return this.runtimeByText;
  }

  /** The runtime entries, unordered (O(n), no sort). */
  *runtime(): Iterable<AccessEntry> {
    for (const e of this.all()) if (e.source === 'runtime') yield e;
  }

  /** Adds an entry; returns an error string for a bad CIDR or a full list. Replaces an entry of the same source for the same prefix. */
  add(text: string, list: AccessVerdict, source: 'config' | 'runtime' = 'runtime'): AccessEntry | string {
    const c = parseCidr(text);
    if (typeof c === 'string') return c;
    const r = this.put(c, list, source);
    if (typeof r === 'string') return r;
    if (source === 'runtime') this.onChange?.();
    return r;
  }

  /** Removes the entries for this prefix (only those from `source`, when given); false when there were none. */
  remove(text: string, source?: 'config' | 'runtime'): boolean {
    const c = parseCidr(text);
    if (typeof c === 'string') return false;
    const here = [...this.at(c)].filter((e) => source === undefined || e.source === source);
    for (const e of here) this.take(e);
    if (here.length === 0) return false;
    if (source !== 'config') this.onChange?.();
    return true;
  }

  /**
   * Applies many changes as one: one pass, one onChange;
   * `notify: false` leaves the onChange to the caller (a sync applied in parts tells once at its end).
   * Runtime additions for a prefix the config lists are refused (the file wins), as are those
   * beyond access.maxEntries.
   */
  applyBatch(
    changes: ReadonlyArray<AccessBatchChange>,
    source: 'config' | 'runtime' = 'runtime',
    opts: { readonly notify?: boolean } = {},
  ): AccessBatchResult {
    const applied: AccessBatchChange[] = [];
    const rejected: Array<{ cidr: string; reason: string }> = [];
    for (const ch of changes) {
      let c: Cidr;
      let text: string;
      if (ch.parsed !== undefined) {
        c = ch.parsed;
        text = ch.cidr;
      } else {
        const p = parseCidr(ch.cidr);
        if (typeof p === 'string') {
          rejected.push({ cidr: String(ch.cidr), reason: p });
          continue;
        }
        c = p;
        text = canonicalCidr(c);
      }
      const f = this.index(c.family);
      // The key once per change: the lookups below and the insert share it.
      const k = f.key(c.network, c.prefix);
      const here = f.bucket(c, false, k);
      if (ch.list === undefined) {
        const gone = here?.filter((e) => e.source === source) ?? [];
        for (const e of gone) this.take(e);
        if (gone.length > 0) applied.push({ cidr: text, list: undefined });
        continue;
      }
      let existing: AccessEntry | undefined;
      if (here !== undefined) {
        if (source === 'runtime') {
          const fromConfig = here.find((e) => e.source === 'config');
          if (fromConfig) {
            rejected.push({ cidr: text, reason: `${text} is in the config file (access.${fromConfig.list}); the file wins` });
            continue;
          }
        }
        existing = here.find((e) => e.source === source);
        if (existing?.list === ch.list) continue;
      }
      const r = this.insert(f, k, c, text, ch.list, source, existing);
      if (typeof r === 'string') rejected.push({ cidr: text, reason: r });
      else applied.push({ cidr: text, list: ch.list });
    }
    if (source === 'runtime' && applied.length > 0 && opts.notify !== false) this.onChange?.();
    return { applied, rejected };
  }

  /** The entries for exactly this prefix (deny first). */
  at(c: Cidr): readonly AccessEntry[] {
    return this.index(c.family).bucket(c, false) ?? [];
  }

  /** The entry that decides for this client: a parsed address (parse once per connection) or its text. */
  match(address: string | Address): AccessEntry | undefined {
    const a = typeof address === 'string' ? parseAddress(address) : address;
    if (typeof a === 'string') return undefined;
    return this.index(a.family).match(a);
  }

  /** Every entry in match order (most specific first, deny first at equal length); sorted once per change. */
  list(): readonly AccessEntry[] {
    if (!this.sorted) {
      this.sorted = [...this.all()].sort((a, b) => b.cidr.prefix - a.cidr.prefix || (a.list === b.list ? 0 : a.list === 'deny' ? -1 : 1));
    }
    return this.sorted;
  }

  get runtimeSize(): number {
    return this.runtimeCount;
  }

  private index(family: 4 | 6): FamilyIndex {
    return family === 4 ? this.v4 : this.v6;
  }

  private *all(): Iterable<AccessEntry> {
    for (const f of [this.v4, this.v6]) for (const m of f.byLength.values()) for (const b of m.values()) yield* b;
  }

  /** Inserts (replacing the same source's entry for the prefix); an error string when the runtime list is full. */
  private put(text: string | Cidr, list: AccessVerdict, source: 'config' | 'runtime'): AccessEntry | string {
    const c = typeof text === 'string' ? parseCidr(text) : text;
    if (typeof c === 'string') return c;
    const f = this.index(c.family);
    const k = f.key(c.network, c.prefix);
    const existing = f.bucket(c, false, k)?.find((e) => e.source === source);
    return this.insert(f, k, c, canonicalCidr(c), list, source, existing);
  }

  /** put() once the prefix is parsed, keyed and formatted, and the same source's entry (if any) found. */
  private insert(
    f: FamilyIndex,
    k: Key,
    c: Cidr,
    canonical: string,
    list: AccessVerdict,
    source: 'config' | 'runtime',
    existing: AccessEntry | undefined,
  ): AccessEntry | string {
    if (!existing && source === 'runtime' && this.runtimeCount >= this.maxEntries) {
      return `the runtime access list is full (access.maxEntries: ${this.maxEntries}); delete entries, use wider prefixes, or raise access.maxEntries`;
    }
    if (existing) this.take(existing);
    const b = f.bucket(c, true, k)!;
    const entry: AccessEntry = { cidr: c, list, source, canonical };
    // Deny before allow at the same prefix; otherwise in insertion order.
    let i = 0;
    while (i < b.length && (b[i]!.list === 'deny' || list === 'allow')) i++;
    b.splice(i, 0, entry);
    if (source === 'runtime') {
      this.runtimeCount++;
      this.runtimeByText.set(canonical, list);
    }
    this.sorted = undefined;
    return entry;
  }

  private take(e: AccessEntry): void {
    const f = this.index(e.cidr.family);
    const b = f.bucket(e.cidr, false);
    if (!b) return;
    const i = b.indexOf(e);
    if (i < 0) return;
    b.splice(i, 1);
    if (b.length === 0) f.drop(e.cidr);
    if (e.source === 'runtime') {
      this.runtimeCount--;
      this.runtimeByText.delete(e.canonical);
    }
    this.sorted = undefined;
  }
}

export function canonical(c: Cidr): string {
  return `${c.family}:${c.network.toString(16)}/${c.prefix}`;
}
