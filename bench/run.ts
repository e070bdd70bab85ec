// `npm run bench`: etd against HAProxy's early-talker recipe in one run on the same load — scenarios, 10-minute deadline, table and JSON.
//
// Runs as root in a network-namespace lab (bench/benchLab.ts). For each scenario etd and
// HAProxy run one after the other, each a fresh process, on the same lab and the same load;
// every figure is reported with its etd/HAProxy ratio. A profile pass of etd follows. The
// whole run is bounded: steps that no longer fit are skipped (and reported), and a hard timer
// ends the run, with whatever was measured, before the 10 minutes are up. Every child process
// is spawned through the lab, which kills it by pid, and the lab is always destroyed.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type BenchLab, createBenchLab, missingPrerequisites } from './benchLab.js';
import { type BenchContext, OutOfTime } from './context.js';
import { loadNow, machineInfo } from './machine.js';
import { type BenchOptions, parseOptions, type ScenarioName, USAGE } from './options.js';
import type { ProxyKind } from './proxy.js';
import { type BenchResult, computeFigures, notes, profileText, table, writeJson } from './report.js';
import { runDnsbl } from './scenarios/dnsbl.js';
import { HOLD_WINDOW_MS, runHeld } from './scenarios/held.js';
import { runCpuProfile, runHeapProfile } from './scenarios/profiling.js';
import { runProtocol } from './scenarios/protocol.js';
import { runDirect, runReturning } from './scenarios/returning.js';
import { runRelay, runSessions } from './scenarios/sessions.js';

/** Whether this etd build accepts the top-level `workers` key (issue 18): `etd check` on a config with it. */
async function etdHasWorkers(cli: string, dir: string): Promise<boolean> {
  const cfg = path.join(dir, 'workers-check.yaml');
  fs.writeFileSync(
    cfg,
    'listeners:\n  - { name: smtp, address: 127.0.0.1, port: 2525, mode: plain }\nupstream:\n  servers:\n    - { name: a, address: 127.0.0.1, port: 25 }\nworkers: auto\n',
  );
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, 'check', '-c', cfg], { timeout: 20_000 }, (err) => resolve(err === null));
  });
}

/** Kept free at the end of the budget for stopping processes and deleting the lab. */
const TEARDOWN_MS = 25_000;

const say = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

function settings(o: BenchOptions): Record<string, unknown> {
  return {
    scenarios: o.scenarios,
    held: o.held,
    heldPerProcess: o.heldPerProcess,
    heldWindowMs: HOLD_WINDOW_MS,
    windowMs: o.windowMs,
    sessions: o.sessions,
    relay: o.relay,
    returning: o.returning,
    haproxyThreads: o.haproxyThreads,
    etd: 'workers 1 (etd-mt: workers auto) when the build has the key, vip mode, upstream.source clientip, roundrobin, health checks 3s rise 2 fall 3, limits off, cache off (on in returning), log level info to a file',
    haproxy:
      'the original recipe (inspect-delay = window, req_len gt 0 → reject, usesrc clientip, roundrobin, smtpchk HELO inter 3s rise 2 fall 3), tcplog to a file, maxconn 19500, no strict-limits',
  };
}

async function main(): Promise<number> {
  let opts: BenchOptions | undefined;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n\n${USAGE}`);
    return 2;
  }
  if (!opts) {
    process.stdout.write(USAGE);
    return 0;
  }
  const missing = missingPrerequisites(opts.etdCli, { haproxy: true });
  if (missing.length) {
    process.stderr.write(`bench: cannot run:\n${missing.map((m) => `  - ${m}`).join('\n')}\n`);
    return 2;
  }
  const o = opts;
  const started = Date.now();
  const hardDeadline = started + o.deadlineMs;
  const result: BenchResult = {
    version: 1,
    startedAt: new Date(started).toISOString(),
    durationS: 0,
    quick: o.quick,
    complete: false,
    machine: machineInfo(),
    lab: { notes: [] },
    settings: settings(o),
    held: {},
    sessions: {},
    relay: {},
    returning: {},
    profile: {},
    figures: [],
    problems: [],
  };
  let bl: BenchLab | undefined;
  let finishing: Promise<void> | undefined;

  // Once: every later call gets the first one's promise, so whoever exits waits for the teardown.
  const finish = (complete: boolean): Promise<void> =>
    (finishing ??= (async () => {
      result.complete = complete;
      result.durationS = Math.round((Date.now() - started) / 1000);
      result.machine.loadEnd = loadNow();
      result.figures = computeFigures(result);
      if (bl) result.lab.notes = bl.notes;
      writeJson(o.json, result);
      process.stdout.write(`\n${table(result.figures)}\n\n${notes(result)}\n`);
      const prof = profileText(result);
      if (prof) process.stdout.write(`\n${prof}\n`);
      process.stdout.write(`\nJSON: ${o.json}\n`);
      say('tearing down the lab …');
      await bl?.destroy();
    })());

  // The hard stop: whatever is still running, report what was measured and tear down in time.
  const hardStop = (why: string, code: number): void => {
    // Once: a second signal, or one during the normal finish, must not cut the teardown short.
    if (finishing) return;
    result.problems.push(why);
    const force = setTimeout(() => process.exit(code), TEARDOWN_MS - 5000);
    void finish(false).finally(() => {
      clearTimeout(force);
      process.exit(code);
    });
  };
  const killer = setTimeout(
    () => hardStop(`hard deadline: the run was stopped ${TEARDOWN_MS / 1000} s before its ${o.deadlineMs / 60_000}-minute limit`, 3),
    o.deadlineMs - TEARDOWN_MS + 5000,
  );
  // `on`, not `once`: the lab's own handler re-raises the signal (ending the process before the teardown) when no other listener is left.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => hardStop(`stopped by ${sig}`, 130));

  const left = (): number => hardDeadline - TEARDOWN_MS - Date.now();
  try {
    say(
      `etd benchmark${o.quick ? ' (--quick)' : ''}: scenarios ${o.scenarios.join(', ')}; held N ${o.held}; deadline ${o.deadlineMs / 60_000} min`,
    );
    bl = await createBenchLab(o.scenarios.includes('returning') || o.scenarios.includes('dnsbl') ? o.returning.addresses : 0, say);
    const etdWorkers = await etdHasWorkers(o.etdCli, bl.dir);
    if (!etdWorkers && o.haproxyThreads)
      result.problems.push('etd-mt not run: this etd build rejects the `workers` config key (issue 18); etd ran without it');
    const ctx: BenchContext = { bl, opts: o, say, left, etdWorkers };

    const attempt = async <T>(what: string, f: () => Promise<T>): Promise<T | undefined> => {
      if (finishing) return undefined;
      const t0 = Date.now();
      say(`${what} …`);
      try {
        const v = await f();
        say(`${what}: done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        return v;
      } catch (e) {
        const msg = e instanceof OutOfTime ? e.message : `${what}: failed: ${e instanceof Error ? e.message : String(e)}`;
        result.problems.push(msg);
        say(msg);
        return undefined;
      }
    };
    // The multi-thread pair (etd workers auto, HAProxy nbthread auto) in held, sessions and relay.
    const proxies = (scenario: ScenarioName): ProxyKind[] =>
      o.haproxyThreads && (scenario === 'held' || scenario === 'sessions' || scenario === 'relay')
        ? ['etd', 'haproxy', ...(etdWorkers ? (['etd-mt'] as const) : []), 'haproxy-mt']
        : ['etd', 'haproxy'];

    for (const scenario of o.scenarios) {
      if (scenario === 'held') {
        for (const k of proxies(scenario)) {
          const v = await attempt(`held connections (${o.held}) through ${k}`, () => runHeld(ctx, k));
          if (v) result.held[k] = v;
        }
      } else if (scenario === 'sessions') {
        for (const k of proxies(scenario)) {
          const v = await attempt(`sessions (${o.sessions.messages}, ${o.sessions.parallel} parallel) through ${k}`, () =>
            runSessions(ctx, k),
          );
          if (v) result.sessions[k] = v;
        }
      } else if (scenario === 'relay') {
        for (const k of proxies(scenario)) {
          const v = await attempt(`relay (${o.relay.messages} × ${o.relay.size / 1e6} MB) through ${k}`, () => runRelay(ctx, k));
          if (v) result.relay[k] = v;
        }
      } else if (scenario === 'returning') {
        const direct = await attempt('returning sender: direct baseline', () => runDirect(ctx));
        if (direct) {
          result.returning.direct = direct;
          for (const k of proxies(scenario)) {
            const v = await attempt(`returning sender through ${k}`, () => runReturning(ctx, k, direct));
            if (v) result.returning[k] = v;
          }
        }
      } else if (scenario === 'dnsbl') {
        result.returning.direct ??= await attempt('returning sender: direct baseline', () => runDirect(ctx));
        const v = await attempt(
          `dnsbl: sessions (${o.sessions.messages}) through etd without lists and with three, and the returning sender`,
          () => runDnsbl(ctx, result.returning.direct),
        );
        if (v) result.dnsbl = v;
      } else if (scenario === 'protocol') {
        const v = await attempt(`protocol: sessions (${o.sessions.messages}) through etd with every protocol test off and at reject`, () =>
          runProtocol(ctx),
        );
        if (v) result.protocol = v;
      } else {
        const dir = o.keepProfiles ?? `${bl.dir}/profiles`;
        fs.mkdirSync(dir, { recursive: true });
        const cpu = await attempt('profile: etd CPU under the sessions load', () => runCpuProfile(ctx, dir));
        if (cpu) result.profile.cpu = cpu;
        const heap = await attempt('profile: etd heap per held connection', () => runHeapProfile(ctx, dir));
        if (heap) result.profile.heap = heap;
      }
    }
  } catch (e) {
    result.problems.push(`lab: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    clearTimeout(killer);
    // After a hard stop this waits for that stop's teardown: it already reported, as incomplete.
    await finish(true);
  }
  return result.figures.some((f) => f.etd !== null) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
