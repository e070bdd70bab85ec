// Load child for test/netns/agentFaults.test.ts: polite SMTP clients in a loop inside a lab namespace, one JSON line per session.
//
// Plain JS (no TS loader in a namespace); uses the BUILT dist/bench/smtpPeers.js.
//   node mailLoad.mjs HOST PORT CONCURRENCY MAX_SECONDS
// stdout: {"event":"result","from","delivered","ended","at"} per session (at = epoch ms when it ended),
//         {"event":"done","sessions"} when SIGTERM arrives or MAX_SECONDS pass. A failed session waits 50 ms
//         before the next, so a dead etd is retried, not spun on.

import { sendMail } from '../../dist/bench/smtpPeers.js';

const [host, port, concurrency, maxSeconds] = process.argv.slice(2);
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
let running = true;
let seq = 0;
let sessions = 0;
const stop = () => (running = false);
process.on('SIGTERM', stop);
setTimeout(stop, Number(maxSeconds) * 1000).unref();

async function loop(worker) {
  while (running) {
    const from = `m${++seq}.w${worker}@load.test`;
    const r = await sendMail({ host, port: Number(port), tag: from, from, timeoutMs: 10_000 });
    sessions++;
    out({ event: 'result', from, delivered: r.delivered, ended: r.ended, at: Date.now() });
    if (!r.delivered) await new Promise((res) => setTimeout(res, 50));
  }
}

await Promise.all(Array.from({ length: Number(concurrency) }, (_, i) => loop(i)));
out({ event: 'done', sessions });
process.exit(0);
