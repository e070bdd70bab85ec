// Pure: the `reputation:` checks the schema cannot express, each naming the key and the fix (called by config/load.ts).

import net from 'node:net';
import { parseDuration } from '../config/duration.js';
import type { RawConfig } from '../config/schema.js';
import { parsePattern } from './match.js';

interface Problem {
  readonly path: string;
  readonly message: string;
}

const LABEL = /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;

/** Whether `zone` is a DNS name (labels of letters, digits, "_" and "-"; a trailing dot allowed). */
export function isZoneName(zone: string): boolean {
  const z = zone.replace(/\.$/, '');
  return z.length > 0 && z.length <= 200 && z.split('.').every((l) => LABEL.test(l));
}

/** "192.0.2.53", "192.0.2.53:5353", "2001:db8::53", "[2001:db8::53]:5353" — what Resolver.setServers takes. */
export function isResolverAddress(text: string): boolean {
  if (net.isIP(text)) return true;
  const v6 = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text);
  const v4 = /^([^:]+):(\d{1,5})$/.exec(text);
  const m = v6 ?? v4;
  if (!m) return false;
  const port = Number(m[2]);
  return port >= 1 && port <= 65535 && (v6 ? net.isIPv6(m[1]!) : net.isIPv4(m[1]!));
}

export function reputationProblems(r: RawConfig['reputation']): Problem[] {
  const out: Problem[] = [];
  const at = (p: string, message: string) => out.push({ path: `reputation.${p}`, message });
  r.dnsbl.forEach((d, i) => {
    if (!isZoneName(d.zone))
      at(`dnsbl[${i}].zone`, `"${d.zone}" is not a DNS zone name; write it like zen.spamhaus.org (letters, digits, "-", "_" between dots)`);
    if (d.weight === 0)
      at(
        `dnsbl[${i}].weight`,
        'is 0, so the list never changes the score; give it a weight (e.g. 3 for a blocklist, -2 for an allowlist) or remove it',
      );
    d.match?.forEach((m, j) => {
      const p = parsePattern(m);
      if (typeof p === 'string') at(`dnsbl[${i}].match[${j}]`, p);
    });
    if (d.name !== undefined && !/^[ -~]+$/.test(d.name))
      at(`dnsbl[${i}].name`, 'must be printable ASCII on one line (it goes into the SMTP reply)');
  });
  if (r.allowThreshold >= r.threshold) {
    at(
      'allowThreshold',
      `must be lower than reputation.threshold (${r.allowThreshold} ≥ ${r.threshold}); e.g. threshold: 3, allowThreshold: -1`,
    );
  }
  if (/[\r\n]/.test(r.reply)) at('reply', 'must be one line; remove the line break');
  const unknown = [...r.reply.matchAll(/\{([^}]*)\}/g)].map((m) => m[1]).filter((k) => k !== 'client' && k !== 'name');
  if (unknown.length) at('reply', `{${unknown[0]}} is not a placeholder; use {client} (the client address) or {name} (the list's name)`);
  r.resolvers.forEach((s, i) => {
    if (!isResolverAddress(s))
      at(
        `resolvers[${i}]`,
        `"${s}" is not a DNS server address; write an IP address, 192.0.2.53:5353 or [2001:db8::53]:5353 (host names are not resolved)`,
      );
  });
  const timeout = parseDuration(r.timeout);
  if (timeout !== undefined && (timeout < 10 || timeout > 60_000))
    at('timeout', `${r.timeout} is out of range; use from 10ms to 60s (postscreen waits for DNS no longer than its greet wait)`);
  const min = parseDuration(r.minTtl);
  const max = parseDuration(r.maxTtl);
  if (min !== undefined && max !== undefined && min > max)
    at('minTtl', `${r.minTtl} is longer than reputation.maxTtl ${r.maxTtl}; make it shorter`);
  if (max !== undefined && max > 7 * 86_400_000)
    at('maxTtl', `${r.maxTtl} is longer than 7d; a delisted client would stay refused that long`);
  return out;
}
