// Benchmark child process (client namespace): opens silent TCP connections to a proxy on command and keeps them open.
//
// Usage: node dist/bench/clients/heldClient.js HOST PORT
//   stdin, one JSON object per line: {"open": K}   open K more connections (as fast as possible)
//   stdout, one JSON object per line:
//     {"event":"ready"}                                   at start
//     {"event":"opened","connected":C,"failed":F,...}     when every connection asked for so far has connected or failed
// It never writes to a connection. It exits when stdin closes or on SIGTERM (closing them all).
// One process stays well below the per-process fd limit; the benchmark runs several.

import net from 'node:net';
import readline from 'node:readline';

const host = process.argv[2];
const port = Number(process.argv[3]);
if (!host || !Number.isInteger(port)) {
  process.stderr.write('usage: heldClient.js HOST PORT\n');
  process.exit(2);
}

const counts = { connected: 0, failed: 0, closedByPeer: 0, gotData: 0 };
const errors = new Map<string, number>();
let asked = 0;
let reported = 0;
let exiting = false;
const sockets = new Set<net.Socket>();
const kConnected = Symbol('connected');
type HeldSocket = net.Socket & { [kConnected]?: boolean };

function out(o: object): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

function check(): void {
  const settled = counts.connected + counts.failed;
  if (settled >= asked && reported < asked) {
    reported = asked;
    out({ event: 'opened', ...counts, errors: Object.fromEntries(errors) });
  }
}

function onConnect(this: HeldSocket): void {
  this[kConnected] = true;
  counts.connected++;
  check();
}
function onData(this: HeldSocket): void {
  counts.gotData++;
}
function onError(this: HeldSocket, err: NodeJS.ErrnoException): void {
  const code = err.code ?? 'error';
  errors.set(code, (errors.get(code) ?? 0) + 1);
  if (!this[kConnected]) {
    counts.failed++;
    check();
  }
}
function onClose(this: HeldSocket): void {
  sockets.delete(this);
  if (this[kConnected] && !exiting) counts.closedByPeer++;
}

function openOne(): void {
  const s: HeldSocket = net.connect({ host, port });
  s.on('connect', onConnect);
  s.on('data', onData);
  s.on('error', onError);
  s.on('close', onClose);
  sockets.add(s);
}

/** Opens `k` connections in bursts, yielding between bursts so completions are handled meanwhile. */
function open(k: number): void {
  asked += k;
  let left = k;
  const burst = (): void => {
    for (let i = 0; i < 250 && left > 0; i++, left--) openOne();
    if (left > 0) setImmediate(burst);
  };
  burst();
  check();
}

function exit(): void {
  exiting = true;
  process.exit(0);
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line) as { open?: number; status?: boolean };
  if (typeof cmd.open === 'number' && cmd.open > 0) open(cmd.open);
  if (cmd.status) out({ event: 'status', ...counts, errors: Object.fromEntries(errors) });
});
process.stdin.on('end', exit);
process.on('SIGTERM', exit);
out({ event: 'ready' });
