// Scripted SMTP clients run inside a lab namespace: an early talker, a polite swaks session, and a greeting timer.

import type { Lab } from '../../lab/netns.js';

/**
 * Connects, sends `EHLO bot` at once, and prints how the connection ended and what came back: at
 * the close, at the first moment the data matches UNTIL (a regex source; optional), or after 8 s.
 */
const EARLY = `
const net = require('net');
const [host, port, until] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) }, () => s.write('EHLO bot.example\\r\\n'));
let data = '';
const done = (how) => { console.log(JSON.stringify({ how, data })); process.exit(0); };
s.on('data', (d) => { data += d; if (until && new RegExp(until).test(data)) done('until'); });
s.on('error', (e) => done(e.code));
s.on('close', () => done('closed'));
setTimeout(() => done('timeout'), 8000);
`;

/**
 * An early talker from the client namespace to host:port. `until`: stop as soon as what came back
 * matches (a relayed early talker, whose session stays open, would otherwise wait out the 8 s).
 */
export async function earlyTalker(lab: Lab, host: string, port = 25, until?: RegExp): Promise<{ how: string; data: string }> {
  const args = ['-e', EARLY, host, String(port), ...(until ? [until.source] : [])];
  const r = await lab.exec(lab.ns.client, process.execPath, args, { timeoutMs: 15_000 });
  return JSON.parse(r.stdout.trim()) as { how: string; data: string };
}

export async function swaks(lab: Lab, server: string, port = 25, extra: string[] = []): Promise<string> {
  const r = await lab.exec(
    lab.ns.client,
    'swaks',
    [
      '--to',
      'rcpt@example.net',
      '--from',
      'sender@example.org',
      '--server',
      server,
      '--port',
      String(port),
      '--timeout',
      '15',
      '--helo',
      'client.example',
      ...extra,
    ],
    { timeoutMs: 30_000 },
  );
  return r.stdout;
}

/** Connects, waits for the greeting, says QUIT; prints how long the greeting took. */
const BANNER = `
const net = require('net');
const [host, port] = process.argv.slice(1);
const t0 = Date.now();
const s = net.connect({ host, port: Number(port) });
let data = '', first;
s.on('data', (d) => { first ??= Date.now() - t0; data += d; if (data.includes('\\r\\n') && !data.includes('221')) s.write('QUIT\\r\\n'); });
const done = (how) => { console.log(JSON.stringify({ how, bannerMs: first, data })); process.exit(0); };
s.on('error', (e) => done(e.code));
s.on('close', () => done('closed'));
setTimeout(() => done('timeout'), 15000);
`;

/** A polite client that only waits for the greeting: how long it waited (the window, or none with a pass-cache hit). */
export async function bannerTime(lab: Lab, host: string, port = 25): Promise<{ how: string; bannerMs: number | undefined; data: string }> {
  const r = await lab.exec(lab.ns.client, process.execPath, ['-e', BANNER, host, String(port)], { timeoutMs: 20_000 });
  return JSON.parse(r.stdout.trim()) as { how: string; bannerMs: number | undefined; data: string };
}
