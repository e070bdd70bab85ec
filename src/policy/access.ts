// Pure access lists: CIDR allow/deny entries from the config and the API; the most specific match wins.

import { cidrContains, parseCidr, type Cidr } from '../config/cidr.js';

export type AccessVerdict = 'allow' | 'deny';

export interface AccessEntry {
  readonly cidr: Cidr;
  readonly list: AccessVerdict;
  /** config entries come back on every reload; runtime entries live in the state store. */
  readonly source: 'config' | 'runtime';
}

/**
 * The entries are kept sorted most specific first (longest prefix), so "the first match wins"
 * means what a routing table means: a /32 allow inside a /8 deny lets that host in. At equal
 * length, deny comes first.
 */
export class AccessLists {
  private entries: AccessEntry[] = [];
  /** Told when a runtime entry is added or removed: the engine workers' copies follow it. */
  onChange: (() => void) | undefined;

  constructor(config: { allow: readonly string[]; deny: readonly string[] }, runtime: ReadonlyArray<{ cidr: string; list: AccessVerdict }> = []) {
    this.replaceConfig(config);
    for (const r of runtime) this.add(r.cidr, r.list, 'runtime');
  }

  /** Reload: config entries are replaced, runtime entries stay. */
  replaceConfig(config: { allow: readonly string[]; deny: readonly string[] }): void {
    const runtime = this.entries.filter((e) => e.source === 'runtime');
    this.entries = [];
    for (const c of config.allow) this.insert(mustParse(c), 'allow', 'config');
    for (const c of config.deny) this.insert(mustParse(c), 'deny', 'config');
    for (const e of runtime) this.insert(e.cidr, e.list, 'runtime');
  }

  /** The runtime entries become exactly `runtime` (an engine worker's copy of the main thread's lists). */
  replaceRuntime(runtime: ReadonlyArray<{ cidr: string; list: AccessVerdict }>): void {
    this.entries = this.entries.filter((e) => e.source !== 'runtime');
    for (const r of runtime) this.add(r.cidr, r.list, 'runtime');
  }

  /** The runtime entries as text, for an engine worker's copy. */
  runtimeEntries(): Array<{ cidr: string; list: AccessVerdict }> {
    return this.entries.filter((e) => e.source === 'runtime').map((e) => ({ cidr: e.cidr.text, list: e.list }));
  }

  /** Adds a runtime entry; returns an error string for a bad CIDR. Replaces an entry of the same source for the same prefix. */
  add(text: string, list: AccessVerdict, source: 'config' | 'runtime' = 'runtime'): AccessEntry | string {
    const c = parseCidr(text);
    if (typeof c === 'string') return c;
    this.remove(c.text, source);
    const entry = this.insert(c, list, source);
    if (source === 'runtime') this.onChange?.();
    return entry;
  }

  /** Removes the entries for this prefix (only those from `source`, when given); false when there were none. */
  remove(text: string, source?: 'config' | 'runtime'): boolean {
    const c = parseCidr(text);
    const key = typeof c === 'string' ? text : canonical(c);
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => canonical(e.cidr) !== key || (source !== undefined && e.source !== source));
    if (this.entries.length === before) return false;
    if (source !== 'config') this.onChange?.();
    return true;
  }

  match(address: string): AccessEntry | undefined {
    for (const e of this.entries) if (cidrContains(e.cidr, address)) return e;
    return undefined;
  }

  list(): readonly AccessEntry[] {
    return this.entries;
  }

  private insert(cidr: Cidr, list: AccessVerdict, source: 'config' | 'runtime'): AccessEntry {
    const entry = { cidr, list, source };
    let i = 0;
    while (i < this.entries.length && better(this.entries[i]!, entry)) i++;
    this.entries.splice(i, 0, entry);
    return entry;
  }
}

function better(a: AccessEntry, b: AccessEntry): boolean {
  if (a.cidr.prefix !== b.cidr.prefix) return a.cidr.prefix > b.cidr.prefix;
  return a.list === 'deny' || b.list === 'allow';
}

export function canonical(c: Cidr): string {
  return `${c.family}:${c.network.toString(16)}/${c.prefix}`;
}

function mustParse(text: string): Cidr {
  const c = parseCidr(text);
  if (typeof c === 'string') throw new Error(`access list entry ${c}`); // the config loader has already refused this
  return c;
}
