// Pure: the doctor's findings for the configured DNSBL/DNSWL zones, from each zone's answer for the test entry 127.0.0.2.

import type { ReputationConfig } from '../config/schema.js';
import { compilePatterns, DEFAULT_MATCH, isRefusedAnswer, matchesAny } from './match.js';

/** RFC 5782 §5: every list answers for 127.0.0.2 (IPv4 test entry). */
export const TEST_ENTRY = '127.0.0.2';

/** What a zone answered for the test entry (gathered by probe.ts). */
export type ZoneProbe =
  | { readonly zone: string; readonly answers: readonly string[] }
  | { readonly zone: string; readonly none: true }
  | { readonly zone: string; readonly error: string };

export interface ZoneFinding {
  readonly id: string;
  readonly status: 'OK' | 'WARN' | 'FAIL';
  readonly what: string;
  readonly detail: string;
  readonly fix?: string;
  readonly critical: false;
}

const OWN_RESOLVER =
  'use your own resolver, not a public one: run a local recursive resolver (e.g. apt-get install unbound) and set reputation.resolvers: [127.0.0.1]';

export function dnsblFindings(c: ReputationConfig, probes: readonly ZoneProbe[]): ZoneFinding[] {
  const resolvers = c.resolvers.length ? c.resolvers.join(', ') : 'the system resolver (/etc/resolv.conf)';
  return c.dnsbl.map((d): ZoneFinding => {
    const id = `dnsbl.${d.zone}`;
    const what = `DNSBL zone ${d.name ?? d.zone} (weight ${d.weight}) answers the test entry ${TEST_ENTRY}`;
    const p = probes.find((x) => x.zone === d.zone);
    const query = `2.0.0.127.${d.zone}`;
    if (!p) return { id, status: 'WARN', what, detail: 'not checked', critical: false };
    if ('error' in p) {
      return {
        id,
        status: 'FAIL',
        what,
        detail: `no answer for ${query} through ${resolvers} (${p.error}): every lookup in this zone will count 0`,
        fix: `check reputation.resolvers and that the resolver reaches the zone: dig ${c.resolvers[0] ? `@${c.resolvers[0].replace(/^\[|\]:\d+$|:\d+$/g, '')} ` : ''}${query} A`,
        critical: false,
      };
    }
    if ('none' in p) {
      return {
        id,
        status: 'WARN',
        what,
        detail: `${query} does not exist: the zone name may be wrong, or the list does not publish the RFC 5782 test entry`,
        fix: `check the spelling of reputation.dnsbl zone ${d.zone} against the list's documentation`,
        critical: false,
      };
    }
    const refused = p.answers.find(isRefusedAnswer);
    if (refused !== undefined) {
      return {
        id,
        status: 'FAIL',
        what,
        detail: `answered ${refused}: the list refused the query (a public or shared resolver, or no access), so every lookup counts 0`,
        fix: OWN_RESOLVER,
        critical: false,
      };
    }
    const patterns = compilePatterns(d.match ?? DEFAULT_MATCH);
    const hit = p.answers.find((a) => matchesAny(patterns, a));
    if (hit === undefined) {
      return {
        id,
        status: 'WARN',
        what,
        detail: `answered ${p.answers.join(', ')}, which reputation.dnsbl match (${(d.match ?? ['127.0.0.0/8 minus 127.255.255.0/24']).join(', ')}) does not count`,
        fix: `check match: for ${d.zone} against the list's return codes`,
        critical: false,
      };
    }
    return { id, status: 'OK', what, detail: `answered ${hit} through ${resolvers}`, critical: false };
  });
}
