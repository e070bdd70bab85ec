// A spam-bot wave from the lab's client namespace: many client addresses, each talking before the greeting; bounded in count and time.
//
// Bot addresses are extra IPv4 addresses on the client's interface (10.x.1.100 and up, inside
// the lab's client subnet), so etd sees many clients, as in a real wave: each one's first
// connection is an early talker, and later ones meet the deny cache (verdict denied).

import type { Lab } from './netns.js';

/** Run in the client namespace: HOST PORT COUNT SPREAD_MS ADDR...; prints one JSON line of results. */
const WAVE = `
const net = require('net');
const [host, port, count, spreadMs, ...addrs] = process.argv.slice(1);
const n = Number(count);
const r = { opened: 0, closedWithoutData: 0, gotData: 0, errors: 0 };
let left = n;
const done = () => { if (--left === 0) { console.log(JSON.stringify(r)); process.exit(0); } };
setTimeout(() => { r.timedOut = left; console.log(JSON.stringify(r)); process.exit(0); }, Number(spreadMs) + 15000);
for (let i = 0; i < n; i++) {
  setTimeout(() => {
    let data = false, settled = false;
    const s = net.connect({ host, port: Number(port), localAddress: addrs[i % addrs.length] });
    const settle = (how) => { if (settled) return; settled = true; r[how]++; s.destroy(); done(); };
    s.on('connect', () => { r.opened++; s.write('EHLO bot' + i + '.example\\r\\n'); });
    s.on('data', () => { data = true; });
    s.on('error', () => settle(data ? 'gotData' : 'closedWithoutData'));
    s.on('close', () => settle(data ? 'gotData' : 'closedWithoutData'));
    setTimeout(() => settle('errors'), 10000);
  }, Math.floor((i * Number(spreadMs)) / n));
}
`;

export interface WaveResult {
  opened: number;
  /** Closed by etd without a byte sent back (drop, or a deny that drops). */
  closedWithoutData: number;
  /** Got a reply (a 554 reject, a 421 limit). */
  gotData: number;
  errors: number;
  timedOut?: number;
}

/** The bot addresses of a wave with `bots` distinct clients (at most 100). */
export function botAddresses(lab: Lab, bots: number): string[] {
  if (bots < 1 || bots > 100) throw new RangeError(`a wave has 1 to 100 bot addresses (got ${bots})`);
  return Array.from({ length: bots }, (_, i) => `10.${lab.x}.1.${100 + i}`);
}

/**
 * `connections` early talkers to `server`:`port`, spread over `spreadMs`, from `bots` addresses
 * in turn. Adds the addresses first (idempotent); they go with the namespace.
 */
export async function botWave(
  lab: Lab,
  server: string,
  opts: { bots: number; connections: number; spreadMs: number; port?: number },
): Promise<WaveResult> {
  if (opts.connections < 1 || opts.connections > 20_000)
    throw new RangeError(`a wave has 1 to 20000 connections (got ${opts.connections})`);
  const addrs = botAddresses(lab, opts.bots);
  await lab.exec(lab.ns.client, 'ip', ['-batch', '-'], {
    input: `${addrs.map((a) => `addr replace ${a}/24 dev ${lab.ifaces.client}`).join('\n')}\n`,
  });
  const r = await lab.exec(
    lab.ns.client,
    process.execPath,
    ['-e', WAVE, server, String(opts.port ?? 25), String(opts.connections), String(opts.spreadMs), ...addrs],
    {
      timeoutMs: opts.spreadMs + 30_000,
    },
  );
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as WaveResult;
}
