// A connection the engine accepted: admission decides (admission.ts), then a session starts, or the client is answered at once and its summary written.

import { consultShared } from '../cluster/attach.js';
import type { SharedState } from '../cluster/shared.js';
import { parseAddress } from '../config/cidr.js';
import type { Config } from '../config/schema.js';
import type { AccessLists } from '../policy/access.js';
import { type ClientCache, cacheKey } from '../policy/clientCache.js';
import { type ConnRate, rateKey } from '../policy/connRate.js';
import { applyScore, judge, refusalOf, vouching, watchLookups } from '../reputation/gate.js';
import type { Reputation } from '../reputation/lookup.js';
import type { Stats } from '../stats.js';
import { admit } from './admission.js';
import type { EngineDriver, NativeAccept } from './engineDriver.js';
import type { LiveCounts } from './liveCounts.js';
import type { SessionContext, SessionReputation, SessionSummary } from './protocol.js';
import { nextSessionId, Session, SHUTDOWN_REPLY, summaryOf } from './session.js';

/** What the intake reads and writes: the App's parts. */
export interface IntakeDeps {
  config(): Config;
  readonly stats: Stats;
  readonly counts: LiveCounts;
  readonly access: AccessLists;
  readonly cache: ClientCache;
  readonly reputation: Reputation;
  /** limits.rate's limiter (undefined = off). */
  rate(): ConnRate | undefined;
  cluster(): SharedState | undefined;
  engine(): EngineDriver;
  stopping(): boolean;
  /** A session's summary line (stats, log, observers). */
  recordEnd(summary: SessionSummary): void;
}

export class Intake {
  constructor(private readonly d: IntakeDeps) {}

  /** A connection the engine accepted: admission decides, then a session or an answer at once. */
  accept(conn: NativeAccept, ctx: SessionContext): void {
    const d = this.d;
    d.stats.accepted++;
    if (d.stopping()) {
      // Arrived while etd stops (still in the accept queue): the same polite 421 as a held client.
      const sent = this.answer(conn, ctx, `${SHUTDOWN_REPLY}\r\n`);
      this.endedAtAccept(ctx, conn, 'shutdown', 'shutdown', sent);
      return;
    }
    const config = d.config();
    const address = conn.peerAddress;
    // Parsed once, when a rule needs it; then one hash lookup per prefix length in use (src/policy/access.ts).
    let parsed: ReturnType<typeof parseAddress> | undefined;
    const parsedAddress = () => {
      parsed ??= parseAddress(address);
      return typeof parsed === 'string' ? undefined : parsed;
    };
    const a = admit(config.limits, {
      sessions: d.counts.sessions,
      held: d.counts.held,
      perClient: () => d.counts.perClient(address),
      listed: () => {
        const p = parsedAddress();
        return p ? d.access.match(p)?.list : undefined;
      },
      withinRate: () => {
        const rate = d.rate();
        const p = rate ? parsedAddress() : undefined;
        return !rate || !p || rate.admit(rateKey(p));
      },
      cached: () => d.cache.lookup(address),
    });
    if ('refuse' in a) {
      const sent = this.answer(conn, ctx, `${a.reply}\r\n`);
      d.stats.limits[a.refuse]++;
      this.endedAtAccept(ctx, conn, 'limit', a.refuse, sent);
    } else if ('deny' in a) {
      let sent = 0;
      if (config.access.denyAction === 'drop') d.engine().engine.drop(conn.eid);
      else sent = this.answer(conn, ctx, `${config.access.denyReply}\r\n`);
      this.endedAtAccept(ctx, conn, 'denied', a.deny, sent);
    } else if (a.skip === 'allowlist' || !d.reputation.enabled) {
      const session = new Session(d.engine(), conn, ctx, a.skip);
      session.begin();
      this.consultCluster(session, conn, a.skip);
    } else {
      this.acceptWithReputation(conn, ctx, a.skip);
    }
  }

  /** A local miss: the window runs as usual and the cluster is asked alongside (never awaited). */
  private consultCluster(session: Session, conn: NativeAccept, skip: 'allowlist' | 'pass_cache' | undefined): void {
    const cluster = this.d.cluster();
    const config = this.d.config();
    if (skip === undefined && cluster && config.cache.enabled && session.holding) {
      const held = this.d.reputation.enabled ? vouching(session) : session;
      consultShared(cluster, held, cacheKey(conn.peerAddress, config.cache.scope), () => this.d.config().access);
    }
  }

  /**
   * A window or pass-cache admission with DNSBL lists configured: a score already cached decides
   * now (refused at accept, or connected at once); otherwise the lookups run during the hold.
   * A returning sender (pass cache) is held only as long as its lookups may take.
   */
  private acceptWithReputation(conn: NativeAccept, ctx: SessionContext, skip: 'pass_cache' | undefined): void {
    const rep = this.d.reputation;
    const known = rep.cached(conn.peerAddress);
    if (known) {
      const j = judge(rep.settings, known);
      if (j.decision === 'refuse') {
        rep.decided('refuse', known);
        const r = refusalOf(rep.settings, conn.peerAddress, known);
        let sent = 0;
        if ('drop' in r.how) this.d.engine().engine.drop(conn.eid);
        else sent = this.answer(conn, ctx, `${r.how.reply}\r\n`);
        this.endedAtAccept(ctx, conn, 'dnsbl', r.cause, sent, j.facts);
        return;
      }
      const s = new Session(this.d.engine(), conn, ctx, skip);
      if (j.decision === 'allow' && !skip) {
        // Held for an instant, then released: the summary says `released: dnswl`.
        s.begin();
        applyScore(s, rep, known);
        return;
      }
      // The window as usual, or a returning sender whose answers are still valid: connected at once.
      rep.decided(j.decision, known);
      s.noteReputation(j.facts);
      s.begin();
      this.consultCluster(s, conn, skip);
      return;
    }
    const s = new Session(this.d.engine(), conn, ctx, skip);
    const holdMs = skip ? Math.min(rep.settings.timeoutMs, s.policy.windowMs) : s.policy.windowMs;
    s.begin(skip ? holdMs : undefined);
    if (!s.done && holdMs > 0) watchLookups(s, rep, holdMs);
    this.consultCluster(s, conn, skip);
  }

  /** A reply at accept, lingering by the listener's policy (replyLingerMs); the bytes written. */
  private answer(conn: NativeAccept, ctx: SessionContext, text: string): number {
    const driver = this.d.engine();
    return driver.engine.reply(conn.eid, { text, profile: driver.profile(ctx.policy.profile) });
  }

  /** A connection answered at accept, before any session existed: its summary line (`sent`: the reply's bytes, -1 none). */
  private endedAtAccept(
    ctx: SessionContext,
    conn: NativeAccept,
    verdict: 'denied' | 'limit' | 'shutdown' | 'dnsbl',
    cause: string,
    sent: number,
    reputation?: SessionReputation,
  ): void {
    this.d.recordEnd(
      summaryOf({
        id: nextSessionId(),
        listener: ctx.listener,
        clientAddress: conn.peerAddress,
        clientPort: conn.peerPort,
        verdict,
        cause,
        heldMs: 0,
        bytesFromClient: 0,
        bytesToClient: Math.max(0, sent),
        ...(reputation ? { reputation } : {}),
      }),
    );
  }
}
