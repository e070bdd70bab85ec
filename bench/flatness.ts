// The endurance run's pure parts: one sample of etd's memory and engine counts, its printed line, and the flat-or-not verdict.
//
// "Flat" is judged on the samples taken under load after a warm-up (allocator arenas, V8's
// heap and the engine's pools grow to their working size first): the largest RSS in the last
// third may exceed the largest in the first third by at most max(10 %, 8 MiB). The engine's
// own counts need no warm-up: docs/engine.md bounds them per live connection (deadlines ≤ 3
// per connection + 1 per paused listener; fds ≤ 2 per connection + listeners), and every
// sample, including the idle one after the load, must stay within that bound. Before issue 13
// a relayed session's deadline entries stayed queued for up to 5 minutes after it ended, so
// deadlines grew with the session count, not with the live connections.

export interface Sample {
  /** Milliseconds since the load started (the start sample: 0, before any session). */
  readonly atMs: number;
  readonly phase: 'start' | 'load' | 'end';
  /** Sessions etd passed and relayed since it started (GET /v1/stats `passed`). */
  readonly sessions: number;
  /** Sessions per second since the previous sample. */
  readonly perS: number;
  /** etd's resident set size (/proc/PID/status VmRSS). */
  readonly rssBytes: number;
  /** GET /v1/status `engine`. */
  readonly connections: number;
  readonly fds: number;
  readonly deadlines: number;
  readonly bufferedBytes: number;
  /** Node's heap in use (/metrics `nodejs_heap_size_used_bytes`); undefined when not scraped. */
  readonly heapUsedBytes: number | undefined;
}

export interface FlatnessRules {
  /** Samples before this (ms since the load started) do not count for RSS. */
  readonly warmupMs: number;
  /** The last third's max RSS may exceed the first third's by max(tolerance × first, slackBytes). */
  readonly rssTolerance: number;
  readonly rssSlackBytes: number;
  /** Engine bounds per live connection, plus `perListener` × the listeners (paused, or their fds). */
  readonly deadlinesPerConnection: number;
  readonly fdsPerConnection: number;
  readonly perListener: number;
}

export const DEFAULT_RULES: Omit<FlatnessRules, 'warmupMs'> = {
  rssTolerance: 0.1,
  rssSlackBytes: 8 * 1024 * 1024,
  deadlinesPerConnection: 3,
  fdsPerConnection: 2,
  perListener: 4,
};

/** What the whole run did besides the samples: the load and whether etd lived through it. */
export interface EnduranceRun {
  readonly samples: readonly Sample[];
  /** Messages smtp-source sent over all rounds (one session each) and the rounds run. */
  readonly messages: number;
  readonly rounds: number;
  /** smtp-source stderr lines, non-zero exits and timeouts over all rounds. */
  readonly sourceProblems: number;
  /** Why the run stopped early or failed outside the samples (etd died, a signal, a timeout). */
  readonly aborted: string | undefined;
}

export interface Verdict {
  readonly ok: boolean;
  /** One line per check, passed or not. */
  readonly findings: readonly string[];
  readonly problems: readonly string[];
}

const MiB = 1024 * 1024;
export const mb = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MB`;
const int = (n: number): string => Math.round(n).toLocaleString('en-US');

/** "[mm:ss] phase sessions … | rss … | engine … | heap …": one printed line per sample. */
export function sampleLine(s: Sample): string {
  const t = Math.round(s.atMs / 1000);
  const stamp = `${String(Math.floor(t / 60)).padStart(2, '0')}:${String(t % 60).padStart(2, '0')}`;
  return (
    `[${stamp}] ${s.phase.padEnd(5)} sessions ${int(s.sessions).padStart(9)} (${int(s.perS).padStart(5)}/s)` +
    ` | rss ${mb(s.rssBytes).padStart(8)}` +
    ` | engine conns ${String(s.connections).padStart(4)} fds ${String(s.fds).padStart(4)} deadlines ${String(s.deadlines).padStart(5)} buffered ${int(s.bufferedBytes / 1024)} KiB` +
    ` | heap ${s.heapUsedBytes === undefined ? '-' : mb(s.heapUsedBytes)}`
  );
}

/** nodejs_heap_size_used_bytes from a Prometheus text exposition; undefined when absent. */
export function heapUsedFromMetrics(text: string): number | undefined {
  const m = /^nodejs_heap_size_used_bytes(?:\{[^}]*\})? ([0-9.e+]+)$/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Flat RSS after warm-up, engine counts bounded per live connection in every sample, sessions done, no smtp-source problems. */
export function judge(run: EnduranceRun, rules: FlatnessRules): Verdict {
  const findings: string[] = [];
  const problems: string[] = [];
  const check = (ok: boolean, text: string): void => {
    findings.push(`${ok ? 'ok  ' : 'FAIL'} ${text}`);
    if (!ok) problems.push(text);
  };

  const warm = run.samples.filter((s) => s.phase !== 'start' && s.atMs >= rules.warmupMs);
  if (warm.length < 2) {
    check(false, `RSS: ${warm.length} sample(s) after the ${rules.warmupMs / 1000} s warm-up; at least 2 are needed to compare`);
  } else {
    const third = Math.ceil(warm.length / 3);
    const firstMax = Math.max(...warm.slice(0, third).map((s) => s.rssBytes));
    const lastMax = Math.max(...warm.slice(-third).map((s) => s.rssBytes));
    const allowed = Math.max(rules.rssTolerance * firstMax, rules.rssSlackBytes);
    const growth = lastMax - firstMax;
    check(
      growth <= allowed,
      `RSS flat: last third's max ${mb(lastMax)} vs first third's ${mb(firstMax)} after ${rules.warmupMs / 1000} s warm-up ` +
        `(${growth >= 0 ? '+' : ''}${mb(growth)}, ${((growth / firstMax) * 100).toFixed(1)} %; allowed +${mb(allowed)}; ${third} of ${warm.length} samples each)`,
    );
  }

  const bound = (perConnection: number, key: 'deadlines' | 'fds'): void => {
    const over = run.samples.filter((s) => s[key] > perConnection * s.connections + rules.perListener);
    const most = run.samples.reduce<Sample | undefined>((m, s) => (m === undefined || s[key] > m[key] ? s : m), undefined);
    const last = run.samples[run.samples.length - 1];
    check(
      run.samples.length > 0 && over.length === 0,
      `${key} ≤ ${perConnection} × connections + ${rules.perListener} in every sample` +
        (most && last
          ? ` (most: ${most[key]} with ${most.connections} connections; last: ${last[key]} with ${last.connections})`
          : ' (no samples)') +
        (over.length ? `; over the bound in ${over.length} of ${run.samples.length}` : ''),
    );
  };
  bound(rules.deadlinesPerConnection, 'deadlines');
  bound(rules.fdsPerConnection, 'fds');

  const sessions = run.samples.length ? (run.samples[run.samples.length - 1] as Sample).sessions : 0;
  check(
    run.messages > 0 && sessions >= run.messages,
    `sessions: etd passed ${int(sessions)}, smtp-source sent ${int(run.messages)} messages in ${run.rounds} round(s)`,
  );
  check(run.sourceProblems === 0, `smtp-source problems: ${run.sourceProblems}`);
  if (run.aborted !== undefined) check(false, `run: ${run.aborted}`);
  return { ok: problems.length === 0, findings, problems };
}
