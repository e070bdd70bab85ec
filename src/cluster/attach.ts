// The cluster's place in the App: the local state SharedState reads and feeds, and what a peer's verdict does to a held session.

import { formatAddress, parseCidr } from '../config/cidr.js';
import type { Config } from '../config/schema.js';
import type { AccessLists } from '../policy/access.js';
import type { ClientCache } from '../policy/clientCache.js';
import type { StateStore } from '../state/store.js';
import type { AccessListName, CacheVerdict } from './keys.js';
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

/** Canonical prefix text, the spelling the API and the store use (192.0.2.0/24). */
function prefixText(text: string): string | undefined {
  const c = parseCidr(text);
  return typeof c === 'string' ? undefined : `${formatAddress(c.family, c.network)}/${c.prefix}`;
}

/** The local state as SharedState sees it: the caches, the access lists and the store behind them. */
export function localState(cache: ClientCache, access: AccessLists, store: StateStore, log: SharedLog): LocalState {
  return {
    adoptCache: (key, kind, expires) => cache.adopt(key, kind, expires),
    cacheEntries: () => cache.entries(),
    runtimeAccess() {
      const m = new Map<string, AccessListName>();
      for (const e of access.list()) if (e.source === 'runtime') m.set(`${formatAddress(e.cidr.family, e.cidr.network)}/${e.cidr.prefix}`, e.list);
      return m;
    },
    applyAccess({ cidr, list }) {
      const text = prefixText(cidr);
      if (text === undefined) return; // not a prefix: another version's data, or garbage
      if (list === undefined) {
        if (access.remove(text, 'runtime')) {
          store.deleteAccess(text);
          log.info({ cidr: text }, `access entry ${text} deleted by a cluster peer`);
        }
        return;
      }
      const here = access.list().filter((e) => `${formatAddress(e.cidr.family, e.cidr.network)}/${e.cidr.prefix}` === text);
      if (here.some((e) => e.source === 'config')) return; // this gateway's config file lists it: the file wins
      if (here.some((e) => e.source === 'runtime' && e.list === list)) return;
      access.add(text, list, 'runtime');
      store.putAccess(text, list);
      log.info({ cidr: text, list }, `access entry ${text} (${list}) added by a cluster peer`);
    },
  };
}
