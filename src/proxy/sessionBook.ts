// The live sessions' bookkeeping on the decision thread: the set, the counts admission reads, stats, the stress window, and the verdicts learnt into the caches.

import type { Logger } from 'pino';
import type { Pool } from '../backend/pool.js';
import type { SharedState } from '../cluster/shared.js';
import type { Config, ListenerConfig } from '../config/schema.js';
import type { ClientCache } from '../policy/clientCache.js';
import type { Stats } from '../stats.js';
import { LiveCounts } from './liveCounts.js';
import { policyOf } from './policy.js';
import type { LiveSession, SessionContext, SessionPolicy, SessionSummary } from './protocol.js';
import { createSource } from './upstream.js';

/** A listener's session context: the policy in force is the normal or the stress one. */
export interface ListenerContext extends SessionContext {
  normal: SessionPolicy;
  stress: SessionPolicy;
}

export interface SessionBookDeps {
  readonly stats: Stats;
  readonly cache: ClientCache;
  readonly pool: Pool;
  readonly log: Logger;
  config(): Config;
  cluster(): SharedState | undefined;
  /** A session's summary line (stats, log, observers). */
  recordEnd(summary: SessionSummary): void;
}

export class SessionBook {
  /** The live sessions, every engine thread's. */
  readonly sessions = new Set<LiveSession>();
  /** Sessions held or relayed, for the limits and the stress window (exact: one thread counts them). */
  readonly counts = new LiveCounts();

  constructor(private readonly d: SessionBookDeps) {}

  /** The context the sessions of one listener report to, with the policies of `config`. */
  context(l: ListenerConfig, config: Config): ListenerContext {
    const book = this;
    const { stats, cache } = this.d;
    return {
      listener: l.name,
      mode: l.mode,
      log: this.d.log.child({ listener: l.name }),
      pool: this.d.pool,
      source: createSource(config.upstream.source),
      normal: policyOf(config),
      stress: policyOf(config, true),
      get policy() {
        return book.counts.stressed ? this.stress : this.normal;
      },
      sessionStarted(s) {
        book.sessions.add(s);
        stats.held++;
        book.counts.started(s.clientAddress);
        book.checkStress();
      },
      sessionRelaying(s) {
        // It waited for the greeting: next time it skips the window. A client let in by its
        // allowlist score (released: dnswl) did not wait, so it earns no pass: its lookups vouch for it again.
        if (!s.talked && !s.skipped && s.released !== 'dnswl') book.learnt('pass', cache.recordPass(s.clientAddress));
        stats.held--;
        stats.relaying++;
        stats.relayed++;
        book.counts.relaying();
        book.checkStress();
      },
      sessionEnded(s, summary) {
        book.sessions.delete(s);
        if (s.relayed) stats.relaying--;
        else stats.held--;
        book.counts.ended(s.clientAddress, s.relayed);
        if (summary.verdict === 'early_talker' || summary.verdict === 'protocol') book.learnt('deny', cache.recordDeny(s.clientAddress));
        book.checkStress();
        book.d.recordEnd(summary);
      },
    };
  }

  /** A verdict recorded in the local cache goes to the cluster too (batched, never awaited). */
  private learnt(kind: 'pass' | 'deny', entry: { key: string; expires: number } | undefined): void {
    if (entry) this.d.cluster()?.recordCache(entry.key, kind, entry.expires);
  }

  /**
   * Stress: above `stress.above` held connections the window shortens (postscreen's 6s → 2s),
   * and below `stress.below` the normal window returns. Hysteresis keeps it from flapping.
   */
  private checkStress(): void {
    const config = this.d.config();
    const { above, below } = config.detection.stress;
    const counts = this.counts;
    const held = counts.held;
    if (!counts.stressed && held > above) {
      if (counts.setStressed(true))
        this.d.log.warn({ held, above, window: config.detection.stress.windowMs }, 'entering stress: shorter window for new connections');
    } else if (counts.stressed && held < below) {
      if (counts.setStressed(false))
        this.d.log.warn({ held, below, window: config.detection.windowMs }, 'leaving stress: normal window again');
    }
  }
}
