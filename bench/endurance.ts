// `npm run bench:endurance`: etd alone under back-to-back full-rate smtp-source rounds for N minutes; RSS and engine counts sampled, judged flat or not.
//
// Runs as root in the benchmark's lab (bench/benchLab.ts): etd as the sessions scenario runs it
// (vip mode, window 100 ms, 5-minute idle timeouts), plus its management API on a unix socket
// in the lab's directory, which the host namespace reaches. smtp-source sends one message per
// connection, round after round, each round sized to about 30 s at the rate measured so far,
// until the minutes are up. Every --interval seconds, and at the start and after the load, it
// samples etd's RSS (procfs), the engine's counts (GET /v1/status), sessions passed (GET
// /v1/stats) and Node's heap (GET /metrics), prints a line, and at the end the verdict of
// bench/flatness.ts. Exit 0 when it passed, 1 when not, 2 when it cannot run. The whole run is
// bounded (minutes + 3); the lab, with every process it spawned (killed by pid), is always
// destroyed, also on SIGINT/SIGTERM.

import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { type BenchLab, CLI, createBenchLab, missingPrerequisites } from './benchLab.js';
import { startEtdProxy } from './etdProxy.js';
import { DEFAULT_RULES, heapUsedFromMetrics, judge, type Sample, sampleLine } from './flatness.js';
import { runSmtpSource } from './load.js';
import { loadNow } from './machine.js';
import { alive, rssBytes, sleep } from './procfs.js';
import { PROXY_PORT, type RunningProxy } from './proxy.js';
import { probe } from './scenarios/sessions.js';

const USAGE = `usage: npm run bench:endurance -- [--minutes N] [--parallel P] [--interval S]   (as root)

Runs etd alone under back-to-back smtp-source rounds (one message per connection, window
100 ms) for N minutes and samples etd's RSS and the engine's connections, fds, deadlines and
buffered bytes every S seconds; passes when RSS stays flat after warm-up and the engine's
counts stay bounded by the live connections.

options:
  --minutes N    load duration (default 10, at most 120)
  --parallel P   smtp-source parallel sessions (default 400, as the sessions scenario)
  --interval S   seconds between samples (default 30)
  -h, --help     this text
`;

/** Setup before the load and teardown after it must fit in this much on top of the minutes. */
const OVERHEAD_MS = 180_000;
/** Kept for tearing the lab down when the hard bound strikes. */
const TEARDOWN_MS = 25_000;
/** After the last round: let the last sessions end before the idle sample. */
const SETTLE_MS = 3000;
/** A round aims at this long, so the rate estimate follows the machine and the last round ends near the minutes. */
const ROUND_TARGET_S = 30;

interface Options {
  minutes: number;
  parallel: number;
  intervalMs: number;
}

function options(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      minutes: { type: 'string' },
      parallel: { type: 'string' },
      interval: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return undefined;
  const num = (name: string, v: string | undefined, dflt: number, max: number): number => {
    const n = v === undefined ? dflt : Number(v);
    if (!Number.isFinite(n) || n <= 0 || n > max)
      throw new Error(`--${name} must be a number above 0 and at most ${max} (got ${JSON.stringify(v)})`);
    return n;
  };
  return {
    minutes: num('minutes', values.minutes, 10, 120),
    parallel: Math.round(num('parallel', values.parallel, 400, 5000)),
    intervalMs: num('interval', values.interval, 30, 600) * 1000,
  };
}

/** GET on etd's management API over its unix socket; the body, or an error on timeout or a non-200. */
function apiGet(socketPath: string, urlPath: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: urlPath, method: 'GET', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () =>
        res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${urlPath}: HTTP ${res.statusCode}: ${body.slice(0, 200)}`)),
      );
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

interface EngineCounts {
  connections: number;
  fds: number;
  deadlines: number;
  bufferedBytes: number;
}

class Sampler {
  readonly samples: Sample[] = [];

  constructor(
    private readonly etd: RunningProxy,
    private readonly socket: string,
    private readonly t0: number,
  ) {}

  async take(phase: Sample['phase']): Promise<Sample> {
    const [status, stats, metrics] = await Promise.all([
      apiGet(this.socket, '/v1/status'),
      apiGet(this.socket, '/v1/stats'),
      apiGet(this.socket, '/metrics').catch(() => ''),
    ]);
    const engine = (JSON.parse(status) as { engine: EngineCounts | null }).engine;
    if (!engine) throw new Error('GET /v1/status: engine is null (etd not running?)');
    const sessions = (JSON.parse(stats) as { passed: number }).passed;
    const atMs = phase === 'start' ? 0 : Date.now() - this.t0;
    const prev = this.samples[this.samples.length - 1];
    const s: Sample = {
      atMs,
      phase,
      sessions,
      perS: prev && atMs > prev.atMs ? ((sessions - prev.sessions) * 1000) / (atMs - prev.atMs) : 0,
      rssBytes: rssBytes(this.etd.pid),
      connections: engine.connections,
      fds: engine.fds,
      deadlines: engine.deadlines,
      bufferedBytes: engine.bufferedBytes,
      heapUsedBytes: heapUsedFromMetrics(metrics),
    };
    this.samples.push(s);
    process.stdout.write(`${sampleLine(s)}\n`);
    return s;
  }
}

interface Load {
  messages: number;
  rounds: number;
  sourceProblems: number;
  firstProblems: string[];
  aborted: string | undefined;
}

/** smtp-source rounds back to back until `endAt`; each sized to ~30 s at the rate of the last (the first: 10 × parallel). */
async function drive(bl: BenchLab, etd: RunningProxy, o: Options, endAt: number, stopped: () => boolean): Promise<Load> {
  const load: Load = { messages: 0, rounds: 0, sourceProblems: 0, firstProblems: [], aborted: undefined };
  let rate = 0;
  while (Date.now() < endAt && !stopped()) {
    const leftS = (endAt - Date.now()) / 1000;
    const messages = rate
      ? Math.max(2 * o.parallel, Math.min(200_000, Math.round(rate * Math.min(ROUND_TARGET_S, leftS))))
      : 10 * o.parallel;
    // Generous: a third of the last rate (50/s before the first round), at least a minute.
    const timeoutMs = Math.max(60_000, (messages / Math.max(rate / 3, 50)) * 1000);
    const r = await runSmtpSource(
      bl,
      { host: etd.address, port: etd.port, parallel: o.parallel, messages, size: 2000, keepConnections: false },
      timeoutMs,
    );
    if (stopped()) break;
    load.rounds++;
    load.messages += messages;
    rate = messages / (r.wallMs / 1000);
    const bad = r.problemCount + (r.exit === 0 ? 0 : 1) + (r.timedOut ? 1 : 0);
    load.sourceProblems += bad;
    if (bad && load.firstProblems.length < 10)
      load.firstProblems.push(
        ...r.problems.slice(0, 10 - load.firstProblems.length),
        ...(r.exit === 0
          ? []
          : [`round ${load.rounds}: exit ${r.exit}${r.timedOut ? ` (timed out after ${Math.round(timeoutMs / 1000)} s)` : ''}`]),
      );
    if (!alive(etd.pid)) {
      load.aborted = `etd (pid ${etd.pid}) died during round ${load.rounds}; log ${etd.logFile}`;
      break;
    }
  }
  return load;
}

async function main(): Promise<number> {
  let o: Options | undefined;
  try {
    o = options(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`bench:endurance: ${e instanceof Error ? e.message : String(e)}\n\n${USAGE}`);
    return 2;
  }
  if (!o) {
    process.stdout.write(USAGE);
    return 0;
  }
  const missing = missingPrerequisites(CLI, { haproxy: false });
  if (missing.length) {
    process.stderr.write(`bench:endurance: cannot run:\n${missing.map((m) => `  - ${m}`).join('\n')}\n`);
    return 2;
  }
  const opts = o;
  const say = (line: string): void => void process.stderr.write(`${line}\n`);
  const loadMs = opts.minutes * 60_000;
  let bl: BenchLab | undefined;
  let stopReason: string | undefined;
  let torn: Promise<void> | undefined;
  const teardown = (): Promise<void> =>
    (torn ??= (async () => {
      say('tearing down the lab …');
      await bl?.destroy();
    })());

  // The hard bound and the signals: stop the load, tear down, exit (once; a second signal changes nothing).
  const abort = (why: string, code: number): void => {
    if (stopReason !== undefined) return;
    stopReason = why;
    say(`bench:endurance: ${why}`);
    const force = setTimeout(() => process.exit(code), TEARDOWN_MS);
    void teardown().finally(() => {
      clearTimeout(force);
      process.exit(code);
    });
  };
  const killer = setTimeout(
    () => abort(`hard bound: still running after ${opts.minutes} min + ${OVERHEAD_MS / 60_000} min; stopped`, 3),
    loadMs + OVERHEAD_MS,
  );
  // `on`, not `once`: the lab's own handler re-raises the signal (killing us before the teardown ends) when no other listener is left.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => abort(`stopped by ${sig}`, 130));

  try {
    bl = await createBenchLab(0, say);
    const socket = path.join(bl.dir, 'api.sock');
    const etd = await startEtdProxy(bl, { windowMs: 100, tag: 'endurance', apiSocket: socket }, PROXY_PORT.etd);
    await probe(bl, etd);
    say(`etd pid ${etd.pid} on ${etd.address}:${etd.port}, API ${socket}, log ${etd.logFile}`);
    say(
      `load: ${opts.minutes} min of smtp-source -s ${opts.parallel}, one 2000-byte message per connection, window 100 ms; a sample every ${opts.intervalMs / 1000} s; load average ${loadNow().join(' ')}`,
    );

    const t0 = Date.now();
    const sampler = new Sampler(etd, socket, t0);
    await sampler.take('start');
    let loadDone = false;
    const sampling = (async () => {
      for (let k = 1; ; k++) {
        while (!loadDone && Date.now() < t0 + k * opts.intervalMs) await sleep(Math.min(250, t0 + k * opts.intervalMs - Date.now()));
        if (loadDone) return;
        await sampler.take('load').catch((e: unknown) => say(`sample failed: ${e instanceof Error ? e.message : String(e)}`));
      }
    })();
    const load = await drive(bl, etd, opts, t0 + loadMs, () => stopReason !== undefined);
    loadDone = true;
    await sampling;
    if (stopReason !== undefined) return 130;
    if (!load.aborted) {
      await sleep(SETTLE_MS);
      await sampler.take('end');
    }
    const warmupMs = Math.min(60_000, loadMs / 5);
    const v = judge(
      {
        samples: sampler.samples,
        messages: load.messages,
        rounds: load.rounds,
        sourceProblems: load.sourceProblems,
        aborted: load.aborted,
      },
      { ...DEFAULT_RULES, warmupMs },
    );
    const wallS = (Date.now() - t0) / 1000;
    process.stdout.write(`\n${v.findings.join('\n')}\n`);
    for (const p of load.firstProblems) process.stdout.write(`smtp-source: ${p}\n`);
    process.stdout.write(
      `verdict: ${v.ok ? 'PASSED' : 'FAILED'} — ${opts.minutes} min, ${load.messages.toLocaleString('en-US')} sessions in ${load.rounds} rounds ` +
        `(${Math.round(load.messages / wallS).toLocaleString('en-US')}/s over ${Math.round(wallS)} s), smtp-source -s ${opts.parallel}; load average ${loadNow().join(' ')}\n`,
    );
    await etd.stop();
    return v.ok ? 0 : 1;
  } catch (e) {
    say(`bench:endurance: failed: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  } finally {
    clearTimeout(killer);
    await teardown();
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`bench:endurance failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
