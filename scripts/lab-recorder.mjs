// Recording SMTP backend for the netns lab: a real smtp-server that prints one JSON line per connect/message/close.
//
// Plain JS so it runs with `node` inside a namespace, no TS loader:
//   node scripts/lab-recorder.mjs [--plain] [--banner=TEXT] ADDRESS:PORT [[V6ADDRESS]:PORT ...]
// stdout, one JSON object per line:
//   {"event":"ready","listening":[{"address","port"}...]}              once every address listens
//   {"event":"connect","remoteAddress","remotePort","localAddress","localPort"}
//   {"event":"message","remoteAddress","localAddress","size","sha256","from","to"}
//   {"event":"close","remoteAddress","remotePort"}
//   {"event":"error","message"}                                         (also on stderr)
// --plain advertises nothing special in EHLO (no PIPELINING, 8BITMIME, SMTPUTF8, SIZE, ...).
// No AUTH, no STARTTLS, no reverse DNS (a namespace has no resolver; lookups would delay the banner).
// SIGTERM/SIGINT close the servers and exit 0.

import { createHash } from 'node:crypto';
import { SMTPServer } from 'smtp-server';

const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

function usage(msg) {
  process.stderr.write(`recorder: ${msg}\nusage: node scripts/lab-recorder.mjs [--plain] [--banner=TEXT] ADDRESS:PORT [[V6]:PORT ...]\n`);
  process.exit(2);
}

let plain = false;
let banner;
const listens = [];
for (const arg of process.argv.slice(2)) {
  if (arg === '--plain') plain = true;
  else if (arg.startsWith('--banner=')) banner = arg.slice('--banner='.length);
  else {
    const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(arg);
    if (!m) usage(`cannot parse listen address "${arg}" (want 10.0.0.1:25 or [fd00::1]:25)`);
    listens.push({ address: m[1] ?? m[2], port: Number(m[3]) });
  }
}
if (listens.length === 0) usage('no listen address given');

const hide = plain
  ? { hidePIPELINING: true, hide8BITMIME: true, hideSMTPUTF8: true, hideENHANCEDSTATUSCODES: true, hideDSN: true, size: 0 }
  : {};

function makeServer() {
  return new SMTPServer({
    secure: false,
    authOptional: true,
    allowInsecureAuth: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    disableReverseLookup: true,
    logger: false,
    banner,
    ...hide,
    onConnect(session, cb) {
      out({
        event: 'connect',
        remoteAddress: session.remoteAddress,
        remotePort: session.remotePort,
        localAddress: session.localAddress,
        localPort: session.localPort,
      });
      cb();
    },
    onData(stream, session, cb) {
      const hash = createHash('sha256');
      let size = 0;
      stream.on('data', (chunk) => {
        size += chunk.length;
        hash.update(chunk);
      });
      stream.on('error', (e) => cb(e));
      stream.on('end', () => {
        out({
          event: 'message',
          remoteAddress: session.remoteAddress,
          localAddress: session.localAddress,
          size,
          sha256: hash.digest('hex'),
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : null,
          to: session.envelope.rcptTo.map((r) => r.address),
        });
        cb(null, 'Queued by the etd lab recorder');
      });
    },
    onClose(session) {
      out({ event: 'close', remoteAddress: session.remoteAddress, remotePort: session.remotePort });
    },
  });
}

const servers = [];
try {
  for (const l of listens) {
    const server = makeServer();
    server.on('error', (e) => {
      out({ event: 'error', message: `${l.address}:${l.port}: ${e.message}` });
      process.stderr.write(`recorder: ${l.address}:${l.port}: ${e.stack ?? e.message}\n`);
    });
    await new Promise((resolve, reject) => {
      server.server.once('error', reject);
      server.listen(l.port, l.address, () => {
        server.server.removeListener('error', reject);
        resolve();
      });
    });
    servers.push(server);
  }
} catch (e) {
  out({ event: 'error', message: `listen failed: ${e.message}` });
  process.stderr.write(`recorder: listen failed: ${e.stack ?? e.message}\n`);
  process.exit(1);
}
// The ports actually bound (port 0 asks the kernel for a free one).
out({ event: 'ready', listening: servers.map((s) => ({ address: s.server.address().address, port: s.server.address().port })) });

function shutdown() {
  // Bounded: smtp-server waits for open sessions on close; do not wait for stragglers.
  setTimeout(() => process.exit(0), 1000).unref();
  let pending = servers.length;
  if (pending === 0) process.exit(0);
  for (const s of servers) s.close(() => (--pending === 0 ? process.exit(0) : undefined));
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
