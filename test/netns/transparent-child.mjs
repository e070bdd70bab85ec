// Child for test/netns/transparent.test.ts: runs one scenario with the BUILT addon inside a lab namespace, prints JSON lines.
//
// Plain JS (no TS loader in a namespace): loads native/build/Release/etd_transparent.node directly.
//   node transparent-child.mjs '<json command>'
// Commands ({"mode": ...}):
//   call     {fn, args}                                  call one addon function → result | error
//   connect  {family, local, host, port, mark, synCount, smtp?, deferMs?}
//            transparentSocket + net.Socket({fd}) + connect, the pattern src/native/transparent.ts
//            documents; reads the banner, optionally sends one message → done | error.
//            deferMs > 0 waits that long between wrapping the fd and connect() (the documented pitfall).
//   listen   {family, address, port, backlog}            transparentListener + server.listen({fd}) → ready,
//            then one "accepted" line per connection (each gets a 220 banner and is closed)
//   dial     {host, port}                                plain net.connect, read the banner → done | error
//   leak     {fn, args, times}                           call fn `times` times, each expected to throw;
//            reports the open-fd count before and after (error paths must close their fd)
//   close    {family, local}                             transparentSocket, closeFd, closeFd again
// Every mode is bounded by timeoutMs (default 20 s) and then exits 3.

import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';

const ADDON = new URL('../../native/build/Release/etd_transparent.node', import.meta.url).pathname;
const cmd = JSON.parse(process.argv[2] ?? '{}');
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const shape = (e) => ({
  name: e?.constructor?.name,
  message: e?.message,
  code: e?.code,
  errno: e?.errno,
  syscall: e?.syscall,
  address: e?.address,
  port: e?.port,
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const deadline = setTimeout(() => {
  out({ event: 'fatal', message: `child timed out after ${cmd.timeoutMs ?? 20000}ms` });
  process.exit(3);
}, cmd.timeoutMs ?? 20000);

const addon = createRequire(import.meta.url)(ADDON);

/** Reads SMTP replies (multi-line aware) from a socket, one promise per reply. */
function replies(socket) {
  let buf = '';
  const ready = [];
  const waiting = [];
  let failure;
  socket.setEncoding('utf8');
  socket.on('data', (d) => {
    buf += d;
    let m;
    while ((m = /^(?:\d{3}-[^\r\n]*\r\n)*\d{3}[ ][^\r\n]*\r\n/.exec(buf))) {
      buf = buf.slice(m[0].length);
      const w = waiting.shift();
      if (w) w.resolve(m[0]);
      else ready.push(m[0]);
    }
  });
  const fail = (e) => {
    failure = e;
    for (const w of waiting.splice(0)) w.reject(e);
  };
  socket.on('error', fail);
  socket.on('close', () => fail(failure ?? Object.assign(new Error('connection closed'), { code: 'ECLOSED' })));
  return () =>
    ready.length
      ? Promise.resolve(ready.shift())
      : failure
        ? Promise.reject(failure)
        : new Promise((resolve, reject) => waiting.push({ resolve, reject }));
}

async function smtpSession(socket, next) {
  const talk = async (line, expect) => {
    socket.write(`${line}\r\n`);
    const r = await next();
    if (!r.startsWith(expect)) throw new Error(`after ${line}: expected ${expect}, got ${JSON.stringify(r)}`);
    return r;
  };
  await talk('EHLO lab.example.test', '250');
  await talk('MAIL FROM:<sender@lab.example.test>', '250');
  await talk('RCPT TO:<rcpt@lab.example.test>', '250');
  await talk('DATA', '354');
  const body = 'From: sender@lab.example.test\r\nTo: rcpt@lab.example.test\r\nSubject: etd lab\r\n\r\nhello from the etd lab\r\n';
  socket.write(body);
  await talk('.', '250');
  await talk('QUIT', '221');
  return { size: Buffer.byteLength(body), sha256: createHash('sha256').update(body).digest('hex') };
}

async function connectMode() {
  let fd;
  try {
    fd = addon.transparentSocket(cmd.family, cmd.local, cmd.mark ?? 0, cmd.synCount ?? 0);
  } catch (e) {
    return out({ event: 'error', stage: 'transparentSocket', error: shape(e) });
  }
  const started = Date.now();
  const socket = new net.Socket({ fd, readable: true, writable: true });
  const early = [];
  if (cmd.deferMs) {
    socket.on('error', (e) => early.push(shape(e)));
    await sleep(cmd.deferMs);
  }
  socket.connect({ host: cmd.host, port: cmd.port });
  const next = replies(socket);
  try {
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const connectMs = Date.now() - started;
    const local = { localAddress: socket.localAddress, localPort: socket.localPort };
    const banner = await next();
    const message = cmd.smtp ? await smtpSession(socket, next) : undefined;
    socket.end();
    out({ event: 'done', fd, connectMs, ...local, banner, message, early });
  } catch (e) {
    socket.destroy();
    out({ event: 'error', stage: 'connect', error: shape(e), elapsedMs: Date.now() - started, early });
  }
}

async function listenMode() {
  let fd;
  try {
    fd = addon.transparentListener(cmd.family, cmd.address, cmd.port, cmd.backlog ?? 16);
  } catch (e) {
    out({ event: 'error', stage: 'transparentListener', error: shape(e) });
    return;
  }
  const server = net.createServer((s) => {
    out({
      event: 'accepted',
      localAddress: s.localAddress,
      localPort: s.localPort,
      remoteAddress: s.remoteAddress,
      remotePort: s.remotePort,
    });
    s.on('error', () => {});
    s.end(`220 etd-lab-listener ${s.localAddress} ${s.remoteAddress}\r\n`);
  });
  server.on('error', (e) => out({ event: 'error', stage: 'server', error: shape(e) }));
  server.listen({ fd }, cmd.backlog ?? 16, () => out({ event: 'ready', fd, address: server.address() }));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
  await new Promise(() => {}); // until killed or the deadline
}

async function dialMode() {
  const started = Date.now();
  const socket = net.connect({ host: cmd.host, port: cmd.port });
  const next = replies(socket);
  try {
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const banner = await next();
    out({ event: 'done', localAddress: socket.localAddress, localPort: socket.localPort, banner });
  } catch (e) {
    out({ event: 'error', stage: 'dial', error: shape(e), elapsedMs: Date.now() - started });
  } finally {
    socket.destroy();
  }
}

function callMode() {
  try {
    out({ event: 'result', value: addon[cmd.fn](...cmd.args) });
  } catch (e) {
    out({ event: 'error', stage: 'call', error: shape(e) });
  }
}

const openFds = () => readdirSync('/proc/self/fd').length;

function leakMode() {
  const before = openFds();
  const codes = new Set();
  let returned = 0;
  for (let i = 0; i < cmd.times; i++) {
    try {
      addon[cmd.fn](...cmd.args);
      returned++;
    } catch (e) {
      codes.add(e.code);
    }
  }
  out({ event: 'done', before, after: openFds(), codes: [...codes], returned });
}

function closeMode() {
  const before = openFds();
  const fd = addon.transparentSocket(cmd.family, cmd.local, 0, 0);
  const open = openFds();
  addon.closeFd(fd);
  const closed = openFds();
  let again;
  try {
    addon.closeFd(fd);
  } catch (e) {
    again = shape(e);
  }
  out({ event: 'done', fd, before, open, closed, again });
}

const modes = { call: callMode, connect: connectMode, listen: listenMode, dial: dialMode, leak: leakMode, close: closeMode };
const run = modes[cmd.mode];
if (!run) {
  out({ event: 'fatal', message: `unknown mode ${JSON.stringify(cmd.mode)}` });
  process.exit(2);
}
await run();
clearTimeout(deadline);
