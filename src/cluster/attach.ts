// The cluster's place in the App: the local state SharedState reads and feeds, and what a peer's verdict does to a held session.

import { canonicalCidr } from '../config/cidr.js';
import type { Config } from '../config/schema.js';
import type { AccessBatchResult, AccessEntry, AccessLists } from '../policy/access.js';
import type { ClientCache } from '../policy/clientCache.js';
import type { StateStore } from '../state/store.js';
import type { AccessChange, AccessListName, CacheVerdict } from './keys.js';
import type { LocalState, SharedLog, SharedState } from './shared.js';

/** What a held session does with a verdict a peer recorded (pure). */
export type SharedDecision =
  | { readonly release: 'cluster_pass' }
  | { readonly refuse: 'cluster_deny'; readonly how: { readonly drop: true } | { readonly reply: string } }
  | undefined;

export function decideShared(kind: CacheVerdict, holding: boolean, access: Config['access']): SharedDecision {
  if (!holding) return undefined; // it talked, hung up, or its window ended first: the local decision stands
  if (kind === 'pass') return { release: 'cluster_pass' };
  return { refuse: 'cluster_deny', how: access.denyAction === 'drop' ? { drop: true } : { reply: access.denyReply } };
}

/** The part of a Session a peer's verdict acts on. */
export interface HeldSession {
  readonly holding: boolean;
  release(reason: string): void;
  refuse(verdict: 'denied', cause: string, how: { readonly drop: true } | { readonly reply: string }): void;
}

/** Runs the shared lookup beside the hold: a pass ends the window early, a deny turns the client away. */
export function consultShared(shared: SharedState, session: HeldSession, key: string, access: () => Config['access']): void {
  shared.lookup(key, (kind) => {
    const d = decideShared(kind, session.holding, access());
    if (!d) return;
    if ('release' in d) session.release(d.release);
    else session.refuse('denied', d.refuse, d.how);
  });
}

/** The local state as SharedState sees it: the caches, the access lists and the store behind them. */
export function localState(cache: ClientCache, access: AccessLists, store: StateStore, log: SharedLog): LocalState {
  const applyAccessBatch = (changes: readonly AccessChange[]): AccessBatchResult => {
    // Peers' data is hostile: a bad prefix, a config prefix or one beyond access.maxEntries is
    // skipped (and counted in the log line), never thrown.
    const r = access.applyBatch(changes, 'runtime');
    store.applyAccessBatch(r.applied);
    return r;
  };
  return {
    adoptCache: (key, kind, expires) => cache.adopt(key, kind, expires),
    cacheEntries: () => cache.entries(),
    runtimeAccess() {
      const m = new Map<string, AccessListName>();
      for (const e of access.runtime()) m.set(canonicalText(e), e.list);
      return m;
    },
    applyAccess(change) {
      const r = applyAccessBatch([change]);
      for (const a of r.applied) {
        if (a.list === undefined) log.info({ cidr: a.cidr }, `access entry ${a.cidr} deleted by a cluster peer`);
        else log.info({ cidr: a.cidr, list: a.list }, `access entry ${a.cidr} (${a.list}) added by a cluster peer`);
      }
      for (const x of r.rejected)
        if (!x.reason.includes('the file wins')) log.warn({ cidr: x.cidr }, `access entry from a cluster peer skipped: ${x.reason}`);
    },
    applyAccessBatch(changes) {
      if (changes.length === 0) return;
      const r = applyAccessBatch(changes);
      const added = r.applied.filter((a) => a.list !== undefined).length;
      const deleted = r.applied.length - added;
      const refused = r.rejected.filter((x) => !x.reason.includes('the file wins'));
      if (r.applied.length > 0)
        log.info(
          { added, deleted, skipped: r.rejected.length },
          `access entries synced from the cluster: ${added} added, ${deleted} deleted`,
        );
      if (refused.length > 0) {
        log.warn(
          { skipped: refused.length, first: refused[0] },
          `${refused.length} access entries from the cluster skipped, e.g. ${refused[0]!.cidr}: ${refused[0]!.reason}`,
        );
      }
    },
  };
}

/** Canonical prefix text of an entry, formatted once per entry (runtimeAccess runs at every sync). */
const texts = new WeakMap<AccessEntry, string>();
function canonicalText(e: AccessEntry): string {
  let t = texts.get(e);
  if (t === undefined) {
    t = canonicalCidr(e.cidr);
    texts.set(e, t);
  }
  return t;
}
