// Early talkers at a steady rate, run as a child process (its own event loop and fd budget): RATE connections a second for SECONDS,
// each sending EHLO at once. Usage: node burstClient.mjs PORT RATE SECONDS → one JSON line: opened, reset (etd's drop), closed, errors, sendMs.
import net from 'node:net';

const [port, rate, seconds] = process.argv.slice(2, 5).map(Number);
const total = Math.min(rate * seconds, 50_000);
const r = { total, opened: 0, reset: 0, closed: 0, errors: 0, sendMs: 0 };
let started = 0;
let ended = 0;
const t0 = performance.now();
const finish = () => {
  process.stdout.write(`${JSON.stringify(r)}\n`);
  process.exit(0);
};
// Bounded in time whatever happens: the sending time plus 15 s for the last answers.
setTimeout(finish, seconds * 1000 + 15_000).unref();

function open() {
  const s = net.connect({ port, host: '127.0.0.1' });
  s.on('connect', () => {
    r.opened++;
    s.write('EHLO burst.example\r\n');
  });
  let settled = false;
  const end = (kind) => {
    if (settled) return;
    settled = true;
    r[kind]++;
    s.destroy();
    if (++ended === total) finish();
  };
  s.once('error', (e) => end(e.code === 'ECONNRESET' ? 'reset' : 'errors'));
  s.once('close', () => end('closed'));
  s.setTimeout(10_000, () => s.destroy());
}

// Every 10 ms, open as many as the schedule says should have been opened by now.
const tick = setInterval(() => {
  const due = Math.min(total, Math.floor(((performance.now() - t0) / 1000) * rate));
  while (started < due) {
    started++;
    open();
  }
  if (started >= total) {
    clearInterval(tick);
    r.sendMs = Math.round(performance.now() - t0);
  }
}, 10);
