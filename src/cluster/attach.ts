// The cluster's place in the App: the local state SharedState reads and feeds, and what a peer's verdict does to a held session.

import type { Config } from '../config/schema.js';
import type { AccessBatchResult, AccessLists } from '../policy/access.js';
import type { ClientCache } from '../policy/clientCache.js';
import type { StateStore } from '../state/store.js';
import type { AccessChange, CacheVerdict } from './keys.js';
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
  /** Runs the decision; if it throws, only this session ends (internal_error). */
  guarded(decide: () => void): void;
}

/** Runs the shared lookup beside the hold: a pass ends the window early, a deny turns the client away. */
export function consultShared(shared: SharedState, session: HeldSession, key: string, access: () => Config['access']): void {
  shared.lookup(key, (kind) =>
    session.guarded(() => {
      const d = decideShared(kind, session.holding, access());
      if (!d) return;
      if ('release' in d) session.release(d.release);
      else session.refuse('denied', d.refuse, d.how);
    }),
  );
}

/** Entries of the shared hash skipped at every sync (access.maxEntries): one warning a minute, not one a sync. */
const WARN_EVERY_MS = 60_000;

/** Prefixes of a sync written to the store per transaction (see `unstored`). */
const STORE_CHUNK = 5000;

/** The local state as SharedState sees it: the caches, the access lists and the store behind them. */
export function localState(cache: ClientCache, access: AccessLists, store: StateStore, log: SharedLog): LocalState {
  /** What the parts of the sync in progress did, told once at its end. */
  let warnedAt = -Infinity;
  let sync = {
    added: 0,
    deleted: 0,
    skipped: 0,
    refused: 0,
    first: undefined as { cidr: string; reason: string } | undefined,
    /** A part threw (guardedLocal counts it). */
    failed: false,
  };
  // Peers' data is hostile: a bad prefix, a config prefix or one beyond access.maxEntries is
  // skipped (and counted in the log line), never thrown.
  const apply = (changes: readonly AccessChange[]): AccessBatchResult => {
    const r = access.applyBatch(changes, 'runtime');
    store.applyAccessBatch(r.applied);
    return r;
  };
  /**
   * Prefixes a sync changed in the lists and not yet in the store. SQLite pays per transaction
   * for every page it touches, and a sync's prefixes come in hash order (random): 100,000 rows
   * in transactions of 1,000 cost 3-4x those of 5,000-10,000 (measured), so the store is written
   * STORE_CHUNK prefixes at a time, in key order, each as the lists hold it when written (so
   * an API change meanwhile is never undone by an older value).
   */
  const unstored = new Set<string>();
  const writeUnstored = (): void => {
    if (unstored.size === 0) return;
    const lists = access.runtimeLists();
    const rows = [...unstored].sort().map((cidr) => ({ cidr, list: lists.get(cidr) }));
    unstored.clear();
    store.applyAccessBatch(rows);
  };
  return {
    adoptCache: (key, kind, expires) => cache.adopt(key, kind, expires),
    cacheEntries: () => cache.entries(),
    runtimeAccess: () => access.runtimeLists(),
    applyAccess(change) {
      const r = apply([change]);
      for (const a of r.applied) {
        if (a.list === undefined) log.info({ cidr: a.cidr }, `access entry ${a.cidr} deleted by a cluster peer`);
        else log.info({ cidr: a.cidr, list: a.list }, `access entry ${a.cidr} (${a.list}) added by a cluster peer`);
      }
      for (const x of r.rejected)
        if (!x.reason.includes('the file wins')) log.warn({ cidr: x.cidr }, `access entry from a cluster peer skipped: ${x.reason}`);
    },
    applyAccessBatch(changes, end = true) {
      // A part: the lists now, the store every STORE_CHUNK prefixes; the store, the listeners and
      // the log hear of the whole sync with its last part, even when a part before it failed.
      try {
        if (changes.length > 0) {
          // A part that throws may have changed some entries: the listeners hear of it all the same.
          let r: AccessBatchResult;
          try {
            r = access.applyBatch(changes, 'runtime', { notify: false });
          } catch (e) {
            sync.failed = true;
            throw e;
          }
          for (const a of r.applied) unstored.add(a.cidr);
          if (unstored.size >= STORE_CHUNK) writeUnstored();
          const added = r.applied.filter((a) => a.list !== undefined).length;
          sync.added += added;
          sync.deleted += r.applied.length - added;
          sync.skipped += r.rejected.length;
          for (const x of r.rejected) {
            if (x.reason.includes('the file wins')) continue;
            sync.refused++;
            sync.first ??= x;
          }
        }
      } finally {
        if (end) {
          writeUnstored();
          const done = sync;
          sync = { added: 0, deleted: 0, skipped: 0, refused: 0, first: undefined, failed: false };
          if (done.added + done.deleted > 0 || done.failed) access.onChange?.();
          if (done.added + done.deleted > 0) {
            log.info(
              { added: done.added, deleted: done.deleted, skipped: done.skipped },
              `access entries synced from the cluster: ${done.added} added, ${done.deleted} deleted`,
            );
          }
          // A refused entry stays in the hash, so every sync meets it again: warned once a minute.
          const now = Date.now();
          if (done.first !== undefined && now - warnedAt >= WARN_EVERY_MS) {
            warnedAt = now;
            log.warn(
              { skipped: done.refused, first: done.first },
              `${done.refused} access entries from the cluster skipped, e.g. ${done.first.cidr}: ${done.first.reason}`,
            );
          }
        }
      }
    },
  };
}
