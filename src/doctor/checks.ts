// Pure: the facts `etd doctor` and the start preflight gathered about this host → findings (OK/WARN/FAIL, each with its fix), in one stable order.
//
// Nothing here does I/O: src/doctor/gather.ts collects the facts, this file decides. The parts:
// facts.ts (what is gathered), testClient.ts (the address the return-path test spoofs),
// returnPath.ts (the test's plan and findings), hostFindings.ts (capabilities, addon, kernel, rules,
// sysctls, routes), finding.ts (the Finding type and its constructors). This module re-exports them:
// callers import from here.
//
// `critical` marks the checks `etd run` enforces at start (commands/doctor.ts preflight()): a
// critical FAIL means etd refuses to start. They are the ones whose failure makes transparency
// silently impossible: capabilities, the native addon, kernel support, src_valid_mark. Strict
// rp_filter is a doctor FAIL but only a warning at start: on a symmetric path it works (measured),
// and refusing to start a working gateway would be worse. Rules, forwarding and the return-path test are never critical: at start the rules
// were just applied (or, with netfilter.manage false, may be installed by the operator after
// start), and backends may be down.

import { dnsblFindings } from '../reputation/doctorFindings.js';
import { type DoctorFacts, transparentListeners } from './facts.js';
import { type Finding, fail, ok } from './finding.js';
import {
  addonFindings,
  capabilityFindings,
  forwardingFindings,
  kernelFindings,
  routeFindings,
  rpFilterFindings,
  rulesFindings,
  srcValidMarkFindings,
} from './hostFindings.js';
import { returnFindings, testClientFindings } from './returnPath.js';

export * from './facts.js';
export * from './finding.js';
export { effectiveRpFilter, effectiveSrcValidMark, neededFeatures } from './hostFindings.js';
export { planReturnPath, routerPbrFix } from './returnPath.js';
export { returnPathServers } from './targets.js';
export { chooseTestClient, spareAddress } from './testClient.js';

/**
 * All findings for these facts, in a stable order: capabilities, addon, kernel, rules, sysctls,
 * routes, test client, return path. Facts left undefined produce no findings (not checked).
 */
export function evaluate(f: DoctorFacts): Finding[] {
  const dnsbl = f.dnsbl ? dnsblFindings(f.config.reputation, f.dnsbl) : [];
  if (transparentListeners(f.config).length === 0) {
    return [
      ok(
        'mode.plain',
        'listener modes',
        'every listener is mode: plain: no transparency, so no netfilter, sysctl or return-path requirements',
        false,
      ),
      ...capabilityFindings(f),
      ...redisFindings(f),
      ...dnsbl,
    ];
  }
  const out: Finding[] = [
    ...capabilityFindings(f),
    ...addonFindings(f),
    ...kernelFindings(f),
    ...rulesFindings(f),
    ...forwardingFindings(f),
    ...rpFilterFindings(f),
    ...srcValidMarkFindings(f),
    ...routeFindings(f),
    ...testClientFindings(f),
  ];
  return [...out, ...returnFindings(f, out), ...redisFindings(f), ...dnsbl];
}

/** cluster.redis: never critical (etd serves from local state without Redis), but a FAIL: the gateways do not share. */
export function redisFindings(f: Pick<DoctorFacts, 'redis'>): Finding[] {
  const r = f.redis;
  if (r === undefined) return [];
  const what = 'shared state over Redis (cluster.redis)';
  if ('ms' in r)
    return [
      ok('cluster.redis', what, `${r.where} answers; wrote, read back and deleted a key under "${r.keyPrefix}" in ${r.ms} ms`, false),
    ];
  if (r.stage === 'connect') {
    return [
      fail(
        'cluster.redis',
        what,
        `cannot connect to ${r.where}: ${r.error}; gateways do not share state until it answers`,
        false,
        'check that redis-server runs and listens on that address (redis-cli -u URL ping), the firewall, and the password and TLS (rediss://) in cluster.redis.url',
      ),
    ];
  }
  return [
    fail(
      'cluster.redis',
      what,
      `${r.where} answers, but writing under "${r.keyPrefix}" failed: ${r.error}`,
      false,
      'grant the Redis user etd logs in as read/write on the prefix: ACL SETUSER <user> ~<keyPrefix>* &<keyPrefix>* +@read +@write +@pubsub +ping; a replica is read-only: point etd at the master (or use sentinels)',
    ),
  ];
}
