// Load client run as a child process (its own fd budget): opens N connections to etd at once;
// even-numbered ones stay silent and expect a banner, odd ones talk early and expect to be cut off.
// Usage: node loadClient.mjs PORT N WINDOW_MS TIMEOUT_MS [all-silent] → prints one JSON line of results.
import net from 'node:net';

const [port, n, windowMs, timeoutMs] = process.argv.slice(2, 6).map(Number);
const allSilent = process.argv[6] === 'all-silent';
const result = { opened: 0, connectErrors: 0, silentPassed: 0, silentFailed: 0, talkerDropped: 0, talkerFailed: 0, failures: [] };
let pending = n;
const deadline = setTimeout(() => {
  result.timedOut = pending;
  finish();
}, timeoutMs);

function finish() {
  clearTimeout(deadline);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

function done(ok, kind, why) {
  if (ok) result[kind === 'silent' ? 'silentPassed' : 'talkerDropped']++;
  else {
    result[kind === 'silent' ? 'silentFailed' : 'talkerFailed']++;
    if (result.failures.length < 10) result.failures.push(why);
  }
  if (--pending === 0) finish();
}

function open(i) {
  const silent = allSilent || i % 2 === 0;
  const s = net.connect({ port, host: '127.0.0.1' });
  let data = '';
  let settled = false;
  const settle = (ok, why) => {
    if (settled) return;
    settled = true;
    s.destroy();
    done(ok, silent ? 'silent' : 'talker', why);
  };
  s.on('connect', () => {
    result.opened++;
    if (!silent) setTimeout(() => s.write('EHLO bot\r\n'), Math.floor((((i * 7919) % 80) / 100) * windowMs));
  });
  s.on('data', (c) => {
    data += c.toString('latin1');
    if (!silent) return settle(false, `talker ${i} got data: ${JSON.stringify(data.slice(0, 40))}`);
    if (data.includes('\r\n')) {
      if (data.startsWith('220 ')) {
        s.write('QUIT\r\n');
        if (data.includes('221')) settle(true);
      } else settle(false, `silent ${i} got ${JSON.stringify(data.slice(0, 40))}`);
    }
  });
  s.on('error', (e) => {
    if (!silent) return settle(data.length === 0, `talker ${i} error ${e.code} after data ${JSON.stringify(data)}`);
    if (!settled && data.length === 0 && !result.opened) result.connectErrors++;
    settle(false, `silent ${i} error ${e.code}`);
  });
  s.on('close', () => {
    if (!silent) settle(data.length === 0, `talker ${i} closed after data`);
    else settle(data.startsWith('220 ') && data.includes('221'), `silent ${i} closed with ${JSON.stringify(data.slice(0, 40))}`);
  });
}

// Open in bursts so the accept queue is exercised without overrunning the SYN backlog.
let i = 0;
(function burst() {
  for (let k = 0; k < 500 && i < n; k++) open(i++);
  if (i < n) setImmediate(burst);
})();
