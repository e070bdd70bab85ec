// SMTP clients for test/netns/cluster.test.ts, run inside the lab's client namespace from a chosen source address.
//
//   node clusterClient.mjs banner HOST PORT SOURCE [WARMHOST:WARMPORT]
//        waits for the greeting, QUIT; prints {how, bannerMs, data}. With WARM, one connection there
//        first, so the measured one does not pay for a cold process (a first connect costs ~3 ms).
//   node clusterClient.mjs early  HOST PORT SOURCE   sends EHLO at once;           prints {how, data}
//   node clusterClient.mjs load   HOST PORT SECONDS CONCURRENCY SOURCE...
//        polite mail sessions (dist/bench/smtpPeers.js sendMail), the sources taken in turn;
//        one line per session {event:"result", from, source, delivered, ended, at}, then {event:"done"}.
// Bounded: every connection has a timeout; load stops after SECONDS or on SIGTERM.

import net from 'node:net';
import { sendMail } from '../../dist/bench/smtpPeers.js';

const [mode, host, port, ...rest] = process.argv.slice(2);
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

function once(early, source, target = host, targetPort = port) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let first;
    let data = '';
    const s = net.connect({ host: target, port: Number(targetPort), localAddress: source });
    s.setNoDelay(true);
    const done = (how) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ how, bannerMs: first, data });
    };
    const timer = setTimeout(() => done('timeout'), 15_000);
    s.on('connect', () => {
      if (early) s.write('EHLO bot.example\r\n');
    });
    s.on('data', (d) => {
      first ??= performance.now() - t0;
      data += d;
      if (!early && data.includes('\r\n') && !data.includes('221')) s.write('QUIT\r\n');
    });
    s.on('error', (e) => done(e.code));
    s.on('close', () => done('closed'));
  });
}

if (mode === 'banner' || mode === 'early') {
  if (rest[1]) {
    const [warmHost, warmPort] = rest[1].split(':');
    await once(false, rest[0], warmHost, warmPort);
  }
  out(await once(mode === 'early', rest[0]));
  process.exit(0);
} else if (mode === 'load') {
  const [seconds, concurrency, ...sources] = rest;
  let running = true;
  let seq = 0;
  process.on('SIGTERM', () => (running = false));
  setTimeout(() => (running = false), Number(seconds) * 1000).unref();
  const worker = async (w) => {
    while (running) {
      const n = ++seq;
      const source = sources[n % sources.length];
      const from = `m${n}.w${w}@load.test`;
      const r = await sendMail({ host, port: Number(port), localAddress: source, tag: from, from, timeoutMs: 10_000 });
      out({ event: 'result', from, source, delivered: r.delivered, ended: r.ended, codes: r.codes, at: Date.now() });
      if (!r.delivered) await new Promise((res) => setTimeout(res, 50));
    }
  };
  await Promise.all(Array.from({ length: Number(concurrency) }, (_, i) => worker(i)));
  out({ event: 'done' });
  process.exit(0);
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
