// The reputation decision applied to a connection: at accept from the cache, or during the hold when the lookups answer.
//
// Order of precedence (issue 14): early talk wins (a session that talked is finished before any
// score can act on it); a score ≥ threshold refuses; ≤ allowThreshold connects at once; otherwise
// the window (or, for a pass-cache hit, the end of the lookups) decides.

import type { ReputationConfig } from '../config/schema.js';
import type { SessionReputation } from '../proxy/protocol.js';
import type { Session } from '../proxy/session.js';
import type { Reputation } from './lookup.js';
import { decide, type ReputationDecision, replyText, type Score } from './score.js';

/** How long before the end of the window a late lookup is given up: the decision must reach a still-held session. */
const WINDOW_MARGIN_MS = 50;

export interface Judged {
  readonly decision: ReputationDecision;
  readonly facts: SessionReputation;
}

export function judge(c: ReputationConfig, score: Score): Judged {
  const decision = decide(score.score, c.threshold, c.allowThreshold);
  return {
    decision,
    facts: { score: score.score, lists: score.hits.map((h) => ({ name: h.name, answer: h.answer })), allowlisted: decision === 'allow' },
  };
}

/** The cause and how to turn the client away, by reputation.action. */
export function refusalOf(
  c: ReputationConfig,
  client: string,
  score: Score,
): { cause: 'dnsbl_drop'; how: { drop: true } } | { cause: 'dnsbl_reject'; how: { reply: string } } {
  return c.action === 'drop'
    ? { cause: 'dnsbl_drop', how: { drop: true } }
    : { cause: 'dnsbl_reject', how: { reply: replyText(c.reply, client, score.hits) } };
}

/** Applies a score to a session (from the cache at accept, or from lookups during its hold). No-op once it is not held. */
export function applyScore(s: Session, rep: Reputation, score: Score): void {
  if (s.done || !s.holding) return;
  const c = rep.settings;
  const { decision, facts } = judge(c, score);
  rep.decided(decision, score);
  s.noteReputation(facts);
  if (decision === 'refuse') {
    const r = refusalOf(c, s.clientAddress, score);
    s.refuse('dnsbl', r.cause, r.how);
  } else if (decision === 'allow') s.release('dnswl');
  // A returning sender (pass cache, or a cluster peer's pass) is held only until its lookups are known.
  else if (s.vouched) s.release(s.vouched);
  else if (s.skipped) s.release('reputation');
}

/**
 * The session as a cluster peer's verdict sees it while lookups may still run: a peer's pass is
 * a pass-cache hit from afar, so like a local one it ends the hold only once the score is known
 * (a listed client that passed on another gateway is still refused here); a peer's deny acts at once.
 */
export function vouching(s: Session): Pick<Session, 'holding' | 'release' | 'refuse' | 'guarded'> {
  return {
    guarded: (decide) => s.guarded(decide),
    get holding() {
      return s.holding;
    },
    release(reason: string) {
      if (s.scored) s.release(reason);
      else s.vouch(reason);
    },
    refuse: (verdict, cause, how) => s.refuse(verdict, cause, how),
  };
}

/**
 * Starts the lookups for a session that was just begun (held for `holdMs`), and applies the
 * score as soon as it is settled: when the answers so far already decide (a listed client with
 * only blocklists pending, every list answered), when all lookups end, or when the hold is about
 * to end (unanswered zones count 0).
 */
export function watchLookups(s: Session, rep: Reputation, holdMs: number): void {
  const deadline = holdMs - WINDOW_MARGIN_MS;
  let over = false;
  let timer: NodeJS.Timeout | undefined;
  const finish = (score: Score): void => {
    if (over) return;
    over = true;
    unwatch();
    if (timer) clearTimeout(timer);
    s.guarded(() => applyScore(s, rep, score));
  };
  const unwatch = rep.watch(s.clientAddress, finish);
  void rep.lookup(s.clientAddress).then(finish);
  // The lookups settle within `timeout` on their own: a timer only when the hold is shorter.
  if (deadline < rep.settings.timeoutMs) {
    timer = setTimeout(
      () => {
        const partial = rep.partial(s.clientAddress);
        if (partial.unanswered.length && s.holding) rep.windowEnded(partial.unanswered, holdMs);
        finish(partial);
      },
      Math.max(0, deadline),
    );
  }
}
