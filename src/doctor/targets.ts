// Pure: what the doctor's return-path test connects to — the config's servers (clientip pools) and the mail servers named with `--probe ADDRESS[:PORT]`.

import { addressToBigInt } from '../config/cidr.js';
import type { Config } from '../config/schema.js';
import { EtdError } from '../errors.js';
import type { Family } from '../netfilter/routing.js';

/** One server the return-path test connects to. `server` is its key in finding ids (`return.<server>`). */
export interface ReturnTarget {
  readonly server: string;
  readonly address: string;
  readonly port: number;
  readonly family: Family;
  /** Named with --probe (not a configured server). */
  readonly probe?: boolean;
}

/** The key of a --probe target: `probe:10.1.2.3:25`, `probe:[fd00::1]:25`. */
export const probeKey = (address: string, port: number, family: Family): string =>
  `probe:${family === 6 ? `[${address}]` : address}:${port}`;

/**
 * Parses one `--probe` value: `ADDRESS`, `ADDRESS:PORT`, `[IPV6]`, `[IPV6]:PORT`, or a bare IPv6
 * address (no port then). Port 25 unless given. Throws ETD_ERR_USAGE naming the value and the forms.
 */
export function parseProbe(text: string): ReturnTarget {
  const bad = (why: string) =>
    new EtdError('ETD_ERR_USAGE', `--probe ${text}: ${why}`, {
      hint: 'write --probe ADDRESS or ADDRESS:PORT (IPv6: [ADDRESS]:PORT), an IP address, not a host name',
    });
  let address = text.trim();
  let portText: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(.*))?$/.exec(address);
  if (bracketed) {
    address = bracketed[1]!;
    portText = bracketed[2];
  } else if ((address.match(/:/g) ?? []).length === 1) {
    [address, portText] = address.split(':') as [string, string];
  }
  const parsed = addressToBigInt(address);
  if (!parsed) throw bad('not an IPv4 or IPv6 address');
  let port = 25;
  if (portText !== undefined) {
    port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
    if (!(port >= 1 && port <= 65535)) throw bad(`port "${portText}" is not a number from 1 to 65535`);
  }
  return { server: probeKey(address, port, parsed.family), address, port, family: parsed.family, probe: true };
}

/** The servers the return-path test connects to from the config: those of pool forwarding with clientip source. */
export function returnPathServers(config: Config): Config['upstream']['servers'] {
  if (config.upstream.source !== 'clientip' || config.listeners.every((l) => l.mode === 'plain')) return [];
  return config.upstream.servers;
}

/** Every target: configured servers, then --probe targets (duplicates of a server's address:port dropped). */
export function returnTargets(config: Config, probes: readonly ReturnTarget[] = []): ReturnTarget[] {
  const out: ReturnTarget[] = [];
  for (const s of returnPathServers(config)) {
    const family = addressToBigInt(s.address)?.family;
    if (family) out.push({ server: s.name, address: s.address, port: s.port, family });
  }
  if (config.listeners.every((l) => l.mode === 'plain')) return out;
  for (const p of probes) {
    if (!out.some((t) => t.address === p.address && t.port === p.port)) out.push(p);
  }
  return out;
}

/** Intercept mode connects to each client's original destination: the config does not name the servers to test. */
export function interceptForwardsOriginal(config: Config): boolean {
  return (
    config.listeners.some((l) => l.mode === 'intercept') && config.upstream.forward === 'original' && config.upstream.source === 'clientip'
  );
}
