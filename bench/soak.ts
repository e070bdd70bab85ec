// The soak driver behind scripts/soak.sh: runs the built etd against two loopback SMTP sinks with a mix of polite
// senders, early talkers, connect-and-RST clients, slowloris clients, backend restarts and SIGHUPs, and prints one
// line a minute: messages accepted by clients vs received by the backends, etd's RSS, heap and fds, and error counts.
//
//   node dist/bench/soak.js [--minutes N | --short] [--polite N] [--keep]
//
// Exit status 0 only when no accepted message is missing at a backend, the final counts are equal, no early talker
// saw a greeting, every polite session succeeded, etd logged no error and exited cleanly, and its fds came back.

import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CLI_PATH as CLI } from '../src/paths.js';
import { type Sink, sendMail, startSink } from './smtpPeers.js';

interface Options {
  minutes: number;
  polite: number;
  keep: boolean;
}

function options(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      minutes: { type: 'string' },
      short: { type: 'boolean', default: false },
      polite: { type: 'string', default: '12' },
      keep: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const minutes = values.short ? 2 : Number(values.minutes ?? 30);
  if (!Number.isFinite(minutes) || minutes <= 0 || minutes > 24 * 60)
    throw new Error(`--minutes must be from 1 to 1440 (got ${values.minutes})`);
  return { minutes, polite: Math.max(1, Number(values.polite)), keep: values.keep };
}

/** What the run counts; printed every minute and at the end. */
class Tally {
  /** Message tags a client saw accepted (250 after DATA). */
  readonly sent = new Set<string>();
  politeSessions = 0;
  readonly politeFailures = new Map<string, number>();
  early = { dropped: 0, denied: 0, leaked: 0, other: 0 };
  rst = { done: 0, errors: 0 };
  slow = { ok: 0, failed: 0 };
  reloadsSent = 0;
  restarts = 0;
  etd = { reloaded: 0, refused: 0, warn: 0, error: 0, sessions: new Map<string, number>(), lastErrors: [] as string[] };

  fail(reason: string): void {
    this.politeFailures.set(reason, (this.politeFailures.get(reason) ?? 0) + 1);
  }
  get failures(): number {
    let n = 0;
    for (const v of this.politeFailures.values()) n += v;
    return n;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const stamp = (t0: number) => {
  const s = Math.round((Date.now() - t0) / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
};

function yamlConfig(sinks: Sink[], statePath: string, windowMs: number): string {
  return `# written by the soak driver
listeners:
  - { name: soak, address: 127.0.0.1, port: 0, mode: plain }
detection: { window: ${windowMs}ms, action: drop }
upstream:
  source: self
  balance: roundrobin
  connectTimeout: 2s
  retries: 1
  passiveFall: 3
  health: { enabled: true, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }
  servers:
${sinks.map((s, i) => `    - { name: sink${i + 1}, address: 127.0.0.1, port: ${s.port} }`).join('\n')}
timeouts: { client: 20s, server: 20s, shutdownGrace: 10s }
limits: { perClient: 0, maxConnections: 5000, maxHeld: 4000 }
cache: { enabled: true, ttl: 1h, denyTtl: 10m }
state: { path: ${JSON.stringify(statePath)} }
api: { enabled: true, address: 127.0.0.1, port: 0 }
log: { level: info }
`;
}

/** The etd child: its JSON log is parsed as it comes; the listening port and API URL are taken from it. */
class Etd {
  readonly child: ChildProcess;
  port = 0;
  api = '';
  private buf = '';
  private readyResolve: (() => void) | undefined;
  readonly ready: Promise<void>;
  readonly exited: Promise<number | null>;

  constructor(
    file: string,
    private readonly tally: Tally,
    logFile: fs.WriteStream,
  ) {
    this.ready = new Promise((r) => (this.readyResolve = r));
    this.child = spawn(process.execPath, [CLI, 'run', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((r) => this.child.on('exit', (code) => r(code)));
    this.child.stdout!.on('data', (c: Buffer) => {
      logFile.write(c);
      this.buf += c.toString('utf8');
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        this.line(line);
      }
    });
    this.child.stderr!.on('data', (c: Buffer) => {
      logFile.write(c);
      // Node's own warnings (e.g. MaxListenersExceededWarning) are worth a look too.
      this.tally.etd.warn++;
    });
  }

  private line(text: string): void {
    let l: Record<string, unknown>;
    try {
      l = JSON.parse(text) as Record<string, unknown>;
    } catch {
      this.tally.etd.error++;
      this.tally.etd.lastErrors.push(`not JSON: ${text.slice(0, 200)}`);
      return;
    }
    const level = Number(l.level);
    const msg = String(l.msg);
    const e = this.tally.etd;
    if (msg === 'session') e.sessions.set(`${l.verdict}/${l.cause}`, (e.sessions.get(`${l.verdict}/${l.cause}`) ?? 0) + 1);
    else if (msg === 'configuration reloaded') e.reloaded++;
    else if (/reload refused/.test(msg)) e.refused++;
    else if (msg === 'listening' && Array.isArray(l.addresses)) this.port = Number(String(l.addresses[0]).split(':').pop());
    else if (msg === 'management API listening' && typeof l.url === 'string') this.api = l.url;
    else if (msg === 'etd started') this.readyResolve?.();
    if (level >= 50) {
      e.error++;
      if (e.lastErrors.length < 10) e.lastErrors.push(text.slice(0, 300));
    } else if (level >= 40 && !/^server .* is now|stress/.test(msg)) e.warn++;
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }
}

function procStatus(pid: number): { rssMB: number; fds: number } {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { rssMB: m ? Math.round(Number(m[1]) / 1024) : 0, fds: fs.readdirSync(`/proc/${pid}/fd`).length };
  } catch {
    return { rssMB: 0, fds: 0 };
  }
}

async function heapMB(api: string): Promise<number> {
  try {
    const text = await (await fetch(`${api}/metrics`, { signal: AbortSignal.timeout(3000) })).text();
    const m = /^nodejs_heap_size_used_bytes (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(text);
    return m ? Math.round(Number(m[1]) / (1024 * 1024)) : -1;
  } catch {
    return -1;
  }
}

/** What the native engine owns now (GET /v1/status), for the flat-memory check: fds, queued deadlines, buffered bytes. */
async function engineView(api: string): Promise<string> {
  try {
    const status = (await (await fetch(`${api}/v1/status`, { signal: AbortSignal.timeout(3000) })).json()) as {
      engine: { connections: number; fds: number; deadlines: number; bufferedBytes: number } | null;
    };
    const e = status.engine;
    return e
      ? `engine conns ${e.connections} fds ${e.fds} deadlines ${e.deadlines} buffered ${Math.round(e.bufferedBytes / 1024)} KiB`
      : 'engine -';
  } catch {
    return 'engine ?';
  }
}

/** A source address on loopback for client class `block`, cycling over `spread` addresses. */
const source = (block: number, i: number, spread: number) => {
  const n = i % spread;
  return `127.${block}.${Math.floor(n / 250)}.${(n % 250) + 1}`;
};

function earlyTalker(port: number, localAddress: string): Promise<'dropped' | 'denied' | 'leaked' | 'other'> {
  return new Promise((resolve) => {
    let data = '';
    let done = false;
    const s = net.connect({ port, host: '127.0.0.1', localAddress }, () => s.write('EHLO bot.example\r\n'));
    const finish = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(data.includes('220') ? 'leaked' : data === '' ? 'dropped' : data.startsWith('554') ? 'denied' : 'other');
    };
    const timer = setTimeout(finish, 10_000);
    s.on('data', (d: Buffer) => (data += d.toString('latin1')));
    s.on('error', finish);
    s.on('close', finish);
  });
}

function connectRst(port: number, localAddress: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress }, () => {
      s.resetAndDestroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/** Waits for the greeting, then sends "NOOP\r\n" one byte every 2 s, then QUIT: ok when both get their replies. */
function slowloris(port: number, localAddress: string): Promise<boolean> {
  return new Promise((resolve) => {
    let data = '';
    let done = false;
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), 40_000);
    const drip = async (): Promise<void> => {
      for (const ch of 'NOOP\r\n') {
        if (done) return;
        s.write(ch);
        await sleep(2000);
      }
      s.write('QUIT\r\n');
    };
    s.on('data', (d: Buffer) => {
      const before = data;
      data += d.toString('latin1');
      if (!before.includes('220 ') && data.includes('220 ')) void drip();
      if (/\r\n250 [^\r\n]*\r\n/.test(data) && data.includes('221 ')) finish(true);
    });
    s.on('error', () => finish(false));
    s.on('close', () => finish(false));
  });
}

async function main(): Promise<number> {
  const o = options(process.argv.slice(2));
  const tally = new Tally();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-soak-'));
  const logFile = fs.createWriteStream(path.join(dir, 'etd.log'));
  const sinks = [await startSink({ name: 'sink1.soak' }), await startSink({ name: 'sink2.soak' })];
  const file = path.join(dir, 'etd.yaml');
  const writeConfig = (windowMs: number): void => {
    fs.writeFileSync(`${file}.new`, yamlConfig(sinks, path.join(dir, 'state.db'), windowMs));
    fs.renameSync(`${file}.new`, file);
  };
  writeConfig(300);
  const etd = new Etd(file, tally, logFile);
  const t0 = Date.now();
  await Promise.race([
    etd.ready,
    etd.exited.then((c) => Promise.reject(new Error(`etd exited (${c}) before it was ready; log: ${dir}/etd.log`))),
  ]);
  const port = etd.port;
  console.log(
    `soak: ${o.minutes} min, etd pid ${etd.pid} on 127.0.0.1:${port}, sinks ${sinks.map((s) => s.port).join(', ')}, ${o.polite} polite senders; log ${dir}/etd.log`,
  );
  console.log(
    'soak: polite senders, early talkers, connect-RST bursts (50/2 s), slowloris (10/20 s), a backend restart every minute, SIGHUP every 10 s, a 20-SIGHUP storm every 5 min',
  );

  let running = true;
  const deadline = t0 + o.minutes * 60_000;
  let tagNo = 0;
  const tasks: Array<Promise<void>> = [];

  // Polite senders: a pause between sessions keeps the rate near 40 messages a second.
  for (let w = 0; w < o.polite; w++) {
    tasks.push(
      (async () => {
        let i = w * 100;
        while (running) {
          const tag = `soak-${++tagNo}@soak.test`;
          const r = await sendMail({ port, tag, localAddress: source(1, i++, 2000), bodyBytes: 300 + (i % 7) * 500, timeoutMs: 30_000 });
          tally.politeSessions++;
          if (r.delivered) tally.sent.add(tag);
          else tally.fail(`${r.codes.join(',') || 'no reply'}/${r.ended}`);
          await sleep(150 + (i % 5) * 50);
        }
      })(),
    );
  }
  // Early talkers (two at a time), each from one of 500 addresses: the deny cache answers repeat offenders.
  for (let w = 0; w < 2; w++) {
    tasks.push(
      (async () => {
        let i = w;
        while (running) {
          tally.early[await earlyTalker(port, source(2, (i += 2), 500))]++;
          await sleep(200);
        }
      })(),
    );
  }
  // Connect-and-RST bursts: 50 every 2 s.
  tasks.push(
    (async () => {
      let i = 0;
      while (running) {
        const results = await Promise.all(Array.from({ length: 50 }, () => connectRst(port, source(3, i++, 1000))));
        for (const ok of results) {
          if (ok) tally.rst.done++;
          else tally.rst.errors++;
        }
        await sleep(2000);
      }
    })(),
  );
  // Slowloris: 10 every 20 s, each ~15 s of dripping.
  tasks.push(
    (async () => {
      let i = 0;
      const pending: Array<Promise<void>> = [];
      while (running) {
        for (let k = 0; k < 10; k++) {
          pending.push(
            slowloris(port, source(4, i++, 1000)).then((ok) => {
              if (ok) tally.slow.ok++;
              else tally.slow.failed++;
            }),
          );
        }
        for (let s = 0; s < 20 && running; s++) await sleep(1000);
      }
      await Promise.all(pending);
    })(),
  );
  // Faults: SIGHUP every 10 s, a storm of 20 SIGHUPs in 2 s at 0:45 and every 5 min after, and a backend
  // restart (the listener closes for 5 s, open sessions finish) at 0:30 and every minute after.
  tasks.push(
    (async () => {
      const hup = (windowMs: number): void => {
        writeConfig(windowMs);
        etd.child.kill('SIGHUP');
        tally.reloadsSent++;
      };
      let nextHup = t0 + 10_000;
      let nextStorm = t0 + 45_000;
      let nextRestart = t0 + 30_000;
      while (running) {
        await sleep(250);
        const now = Date.now();
        if (now >= nextHup) {
          hup(tally.reloadsSent % 2 ? 300 : 350);
          nextHup += 10_000;
        }
        if (now >= nextStorm) {
          for (let k = 0; k < 20; k++) {
            hup(k % 2 ? 300 : 350);
            await sleep(100);
          }
          nextStorm += 300_000;
        }
        if (now >= nextRestart) {
          const sink = sinks[tally.restarts % sinks.length]!;
          await sink.stopListening();
          tally.restarts++;
          await sleep(5000);
          await sink.listen();
          nextRestart += 60_000;
        }
      }
    })(),
  );

  let baselineFds = 0;
  const report = async (label: string): Promise<{ lost: number; inFlight: number; fds: number }> => {
    const received = new Set<string>();
    for (const s of sinks) for (const m of s.messages) received.add(m);
    let lost = 0;
    for (const t of tally.sent) if (!received.has(t)) lost++;
    const inFlight = received.size - (tally.sent.size - lost);
    const p = procStatus(etd.pid);
    const heap = etd.api ? await heapMB(etd.api) : -1;
    const engine = etd.api ? await engineView(etd.api) : 'engine ?';
    const e = tally.etd;
    console.log(
      `[${stamp(t0)}] ${label.padEnd(6)} sent ${tally.sent.size} received ${received.size} ${lost === 0 && inFlight === 0 ? 'equal' : `lost ${lost} unconfirmed ${inFlight}`}` +
        ` | polite ${tally.politeSessions} failed ${tally.failures}` +
        ` | early dropped ${tally.early.dropped} denied ${tally.early.denied} leaked ${tally.early.leaked}` +
        ` | rst ${tally.rst.done} | slowloris ok ${tally.slow.ok} failed ${tally.slow.failed}` +
        ` | restarts ${tally.restarts} reloads ${e.reloaded}/${tally.reloadsSent}` +
        ` | etd rss ${p.rssMB} MB heap ${heap} MB fds ${p.fds} | ${engine} | errors ${e.error} warnings ${e.warn} refused ${e.refused}`,
    );
    return { lost, inFlight, fds: p.fds };
  };

  // The first report after a minute of load is the fd baseline for the end.
  let minute = 0;
  while (Date.now() < deadline && etd.child.exitCode === null) {
    const next = t0 + (minute + 1) * 60_000;
    while (Date.now() < Math.min(next, deadline) && etd.child.exitCode === null) await sleep(250);
    minute++;
    const r = await report(`min ${minute}`);
    if (minute === 1) baselineFds = r.fds;
  }
  running = false;
  await Promise.all(tasks);
  for (const s of sinks) await s.listen().catch(() => undefined);
  // Let the last sessions and health checks settle before the final count.
  await sleep(3000);
  const final = await report('final');
  const politeReasons = [...tally.politeFailures].map(([k, v]) => `${k} ×${v}`).join(', ');
  const verdicts = [...tally.etd.sessions]
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  console.log(`soak: etd sessions by verdict/cause: ${verdicts}`);
  if (politeReasons) console.log(`soak: polite failures: ${politeReasons}`);
  for (const l of tally.etd.lastErrors) console.log(`soak: etd error: ${l}`);

  etd.child.kill('SIGTERM');
  const code = await Promise.race([etd.exited, sleep(20_000).then(() => 'timeout' as const)]);
  if (code === 'timeout') etd.child.kill('SIGKILL');
  for (const s of sinks) await s.close();
  logFile.end();

  const problems: string[] = [];
  if (final.lost > 0) problems.push(`${final.lost} accepted messages are missing at the backends`);
  if (final.inFlight !== 0) problems.push(`sent and received differ by ${final.inFlight}`);
  if (tally.early.leaked > 0) problems.push(`${tally.early.leaked} early talkers saw a greeting`);
  if (tally.failures > 0) problems.push(`${tally.failures} polite sessions failed`);
  if (tally.etd.error > 0) problems.push(`etd logged ${tally.etd.error} errors`);
  if (tally.etd.refused > 0) problems.push(`${tally.etd.refused} reloads were refused`);
  if (code !== 0) problems.push(`etd exited with ${String(code)} on SIGTERM`);
  if (baselineFds && final.fds > baselineFds + 20) problems.push(`etd fds grew from ${baselineFds} to ${final.fds}`);
  console.log(
    problems.length
      ? `soak: FAILED: ${problems.join('; ')}`
      : `soak: PASSED (${o.minutes} min, ${tally.sent.size} messages, fds ${baselineFds} → ${final.fds})`,
  );
  if (!o.keep) fs.rmSync(dir, { recursive: true, force: true });
  else console.log(`soak: kept ${dir}`);
  return problems.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`soak: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(2);
  },
);
