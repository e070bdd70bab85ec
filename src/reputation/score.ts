// Pure: the reputation decision — a client's score from its lists' answers, and what it earns.
//
// Postscreen's rules: each list that answers with a matching address adds its weight once; a
// negative weight is an allowlist. A list that did not answer in time (timeout, error, overflow)
// counts 0. An answer in 127.255.255.0/24 is a refused query and never counts.

import { type AnswerPattern, isRefusedAnswer, matchesAny } from './match.js';

/** One configured list, compiled. */
export interface ReputationList {
  readonly zone: string;
  /** What the logs, the summary and the reply call it (the zone unless `name:` hides it). */
  readonly name: string;
  readonly weight: number;
  readonly patterns: readonly AnswerPattern[];
}

/** What one zone's query gave: its A records, nothing (NXDOMAIN/NODATA), or no answer in time. */
export type ZoneAnswer =
  | { readonly status: 'answer'; readonly addresses: readonly string[] }
  | { readonly status: 'none' }
  | { readonly status: 'timeout' | 'error' | 'overflow' };

export interface ListHit {
  readonly name: string;
  readonly answer: string;
  readonly weight: number;
}

export interface Score {
  readonly score: number;
  /** The lists that matched, with the answer that matched (the summary's `lists`). */
  readonly hits: readonly ListHit[];
  /** Lists that answered 127.255.255.x (refused query): counted 0. */
  readonly refused: readonly { readonly zone: string; readonly answer: string }[];
  /** Zones that did not answer in time (counted 0). */
  readonly unanswered: readonly string[];
}

/** The score of a client from each zone's answer (a zone missing from `answers` counts 0, as unanswered). */
export function scoreOf(lists: readonly ReputationList[], answers: ReadonlyMap<string, ZoneAnswer>): Score {
  let score = 0;
  const hits: ListHit[] = [];
  const refused: Array<{ zone: string; answer: string }> = [];
  const unanswered = new Set<string>();
  const refusedZones = new Set<string>();
  for (const list of lists) {
    const a = answers.get(list.zone);
    if (!a || (a.status !== 'answer' && a.status !== 'none')) {
      unanswered.add(list.zone);
      continue;
    }
    if (a.status === 'none') continue;
    let matched: string | undefined;
    for (const address of a.addresses) {
      if (isRefusedAnswer(address)) {
        if (!refusedZones.has(list.zone)) refused.push({ zone: list.zone, answer: address });
        refusedZones.add(list.zone);
        continue;
      }
      if (matched === undefined && matchesAny(list.patterns, address)) matched = address;
    }
    if (matched !== undefined) {
      score += list.weight;
      hits.push({ name: list.name, answer: matched, weight: list.weight });
    }
  }
  return { score, hits, refused, unanswered: [...unanswered] };
}

export type ReputationDecision = 'refuse' | 'allow' | 'window';

/** ≥ threshold: refused; ≤ allowThreshold: connected at once; otherwise the window decides. */
export function decide(score: number, threshold: number, allowThreshold: number): ReputationDecision {
  if (score >= threshold) return 'refuse';
  if (score <= allowThreshold) return 'allow';
  return 'window';
}

/** The refusal text: `{client}` and `{name}` (the heaviest matching list's name) filled in. */
export function replyText(template: string, client: string, hits: readonly ListHit[]): string {
  const top = [...hits].sort((a, b) => b.weight - a.weight)[0];
  return template.replaceAll('{client}', client).replaceAll('{name}', top?.name ?? 'a DNS blocklist');
}

/**
 * Whether a score is final although some zones have not answered: the unanswered lists' weights
 * could not change the decision (a listed client with only blocklists pending is refused, an
 * allowlisted one with only allowlists pending is let in). Undefined while they still could.
 */
export function settledDecision(
  lists: readonly ReputationList[],
  s: Score,
  threshold: number,
  allowThreshold: number,
): ReputationDecision | undefined {
  if (s.unanswered.length === 0) return decide(s.score, threshold, allowThreshold);
  let up = 0;
  let down = 0;
  for (const l of lists) {
    if (!s.unanswered.includes(l.zone)) continue;
    if (l.weight > 0) up += l.weight;
    else down += l.weight;
  }
  if (s.score + down >= threshold) return 'refuse';
  if (s.score + up <= allowThreshold) return 'allow';
  return undefined;
}
