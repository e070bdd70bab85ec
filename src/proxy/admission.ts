// Pure: what happens to a new connection before any session exists, from the limits, the access lists and the caches (table-tested in test/unit/admit.test.ts).

import type { Config } from '../config/schema.js';

/** What happens to a new connection, before any session exists. */
export type Admission =
  | { readonly refuse: 'max_connections' | 'max_held' | 'per_client' | 'per_client_rate'; readonly reply: string }
  | { readonly deny: 'access_deny' | 'deny_cache' }
  | { readonly skip: 'allowlist' | 'pass_cache' | undefined };

// Every answer admission can give, made once (admission runs for every connection).
const BUSY = '421 4.7.0 Too many connections, try again later';
export const ADMIT = {
  maxConnections: { refuse: 'max_connections', reply: BUSY },
  maxHeld: { refuse: 'max_held', reply: BUSY },
  perClient: { refuse: 'per_client', reply: '421 4.7.0 Too many connections from your address' },
  perClientRate: { refuse: 'per_client_rate', reply: '421 4.7.0 Too many connections from your address, slow down' },
  accessDeny: { deny: 'access_deny' },
  denyCache: { deny: 'deny_cache' },
  allowlist: { skip: 'allowlist' },
  passCache: { skip: 'pass_cache' },
  window: { skip: undefined },
} as const satisfies Record<string, Admission>;

/**
 * What admission asks about the client, each only when the rules before it did not decide
 * (so a refused flood costs no list or cache lookup).
 */
export interface AdmissionFacts {
  /** Sessions held or relayed now, of them held, and from this client. */
  readonly sessions: number;
  readonly held: number;
  perClient(): number;
  /** The access list entry that matches the client, if any. */
  listed(): 'allow' | 'deny' | undefined;
  /** limits.rate: counts this connection against the client's rate; false when over it (true when off). */
  withinRate(): boolean;
  /** The client's verdict in the pass/deny cache, if any. */
  cached(): 'pass' | 'deny' | undefined;
}

/**
 * Limits first, then the allow/deny lists, the connection rate, then the caches: a listed client
 * never waits or is always refused; access.allow bypasses the rate, and a denied client is refused
 * without counting against it.
 */
export function admit(limits: Config['limits'], f: AdmissionFacts): Admission {
  if (f.sessions >= limits.maxConnections) return ADMIT.maxConnections;
  if (f.held >= limits.maxHeld) return ADMIT.maxHeld;
  if (limits.perClient > 0 && f.perClient() >= limits.perClient) return ADMIT.perClient;
  const listed = f.listed();
  if (listed === 'deny') return ADMIT.accessDeny;
  if (listed === 'allow') return ADMIT.allowlist;
  if (!f.withinRate()) return ADMIT.perClientRate;
  const cached = f.cached();
  if (cached === 'deny') return ADMIT.denyCache;
  return cached === 'pass' ? ADMIT.passCache : ADMIT.window;
}
