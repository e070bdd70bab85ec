// How `npm test` schedules the test files: which run side by side, which run apart, and in which order (vitest.config.ts, vitest.workers.config.ts).
//
// Two groups, one after the other. The parallel group runs every file that tolerates neighbours,
// several at a time (ETD_TEST_PARALLEL, default 4), longest first: unit and integration files,
// and the netns and system files too (each netns file builds its own uniquely named namespaces
// and deletes them; they wait on windows and timeouts far more than they compute). The serial
// group then runs the files that time what they measure or count the process itself, where the
// parallel group's crowd would make them lie: two at a time on the 2-core CI machine, paired by
// their order (ETD_TEST_SERIAL=1 runs them one at a time).

import { statSync } from 'node:fs';
import path from 'node:path';
import type { TestProjectConfiguration } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/** Integration files that run in the serial group, each for its reason. */
export const SERIAL_INTEGRATION = [
  'test/integration/health.test.ts', // asserts check intervals to ±250 ms
  'test/integration/hostile.test.ts', // floods of thousands of sessions; counts heap and fds
  'test/integration/fuzz.test.ts', // CPU-bound; bounds each case's time
  'test/integration/guard.test.ts', // 15 ms gaps must split the bytes into separate reads
  'test/integration/dashboardBurst.test.ts', // Chromium under a verdict burst; measures frame gaps
  'test/integration/cache.test.ts', // asserts allowed and denied answers within 150 ms (239 ms seen beside other files)
  'test/integration/limits.test.ts', // opens 2,000 connections at once (1,950 held seen beside other files)
  'test/integration/agentFaults.test.ts', // a SIGHUP storm paced at 100 ms and a full tmpfs (its deny entry was missed beside other files)
  'test/integration/hold.test.ts', // 2,500 talkers must talk within a 3 s window among 5,000 connections (talkers got the banner beside other files at load 8)
];

/** Netns files that run in the serial group: they time what they measure. */
export const SERIAL_NETNS = [
  'test/netns/cluster.test.ts', // a banner through B in under 5 ms; no event-loop stall over 50 ms with Redis killed under load
  'test/netns/ha.test.ts', // sessions deliver through the backup within 5 s of the kill
  'test/netns/dashboard.test.ts', // an early talker in the browser's verdict stream within 2 s (2.2 s seen beside other files)
  'test/netns/preflight.test.ts', // the preflight passes within 1 s (1.5 s seen beside other files)
  'test/netns/intercept.test.ts', // a session outside the destinations must take under 450 ms (no window)
  'test/netns/agentFaults.test.ts', // after SIGKILL mid-load, the next start serves within 2 s
];

/** Every file of the serial group. */
export const SERIAL = [...SERIAL_NETNS, ...SERIAL_INTEGRATION];

/**
 * The order the serial group runs in, two at a time (ETD_TEST_SERIAL), so the order pairs them:
 * the files that mostly wait or compute little first, beside each other (a pass-2 file is named
 * `workers2:` and its path), then the heavy ones (floods, Chromium, CPU-bound) beside each other,
 * each with about one core. A serial file missing here runs last.
 */
export const SERIAL_ORDER = [
  'test/netns/cluster.test.ts',
  'test/netns/ha.test.ts',
  'test/integration/health.test.ts',
  'workers2:test/integration/health.test.ts',
  'test/integration/cache.test.ts',
  'workers2:test/integration/cache.test.ts',
  'test/netns/preflight.test.ts',
  'test/netns/intercept.test.ts',
  'test/netns/agentFaults.test.ts',
  'test/integration/guard.test.ts',
  'test/integration/hostile.test.ts',
  'test/netns/dashboard.test.ts',
  'test/integration/limits.test.ts',
  'workers2:test/integration/limits.test.ts',
  'test/integration/dashboardBurst.test.ts',
  'test/integration/fuzz.test.ts',
  'test/integration/agentFaults.test.ts',
  'workers2:test/integration/agentFaults.test.ts',
  'test/integration/hold.test.ts',
  'workers2:test/integration/hold.test.ts',
];
for (const f of SERIAL) if (!SERIAL_ORDER.includes(f)) throw new Error(`test/schedule.ts: ${f} is missing from SERIAL_ORDER`);

/**
 * Rough seconds of the files that take longest (measured on the 2-core CI machine, alone or
 * beside others): they start first. Unlisted files follow, larger files first. Only the order
 * depends on these figures, never a result: a stale figure costs time, not correctness.
 */
export const EXPECTED_SECONDS: Record<string, number> = {
  'test/system/deb.test.ts': 55,
  'test/netns/doctor.test.ts': 35,
  'test/netns/vip.test.ts': 45,
  'test/netns/bench.test.ts': 45,
  'test/netns/cluster.test.ts': 40,
  'test/netns/dnsbl.test.ts': 33,
  'test/netns/dashboard.test.ts': 30,
  'test/netns/pbr.test.ts': 27,
  'test/netns/ha.test.ts': 26,
  'test/netns/privilege.test.ts': 18,
  'test/integration/clusterHostile.test.ts': 19,
  'test/integration/hostile.test.ts': 17,
  'test/integration/limits.test.ts': 16,
  'test/netns/netfilter.test.ts': 15,
  'test/integration/dashboardBurst.test.ts': 15,
  'test/integration/agentFaults.test.ts': 15,
  'test/integration/engine.test.ts': 14,
  'test/integration/workers.test.ts': 14,
  'test/netns/demo.test.ts': 12,
  'test/netns/transparent.test.ts': 12,
  'test/integration/proxy.test.ts': 12,
  'test/integration/fuzz.test.ts': 12,
  'test/integration/health.test.ts': 12,
  'test/integration/cluster.test.ts': 11,
  'test/integration/cache.test.ts': 10,
};

/** The parallel group starts its longest files first (EXPECTED_SECONDS, then file size); the serial group runs in SERIAL_ORDER. */
export class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const root = this.ctx.config.root;
    const weight = (s: TestSpecification): [number, number] => {
      const rel = path.relative(root, s.moduleId);
      let size = 0;
      try {
        size = statSync(s.moduleId).size;
      } catch {
        // a file that vanished sorts last; vitest reports it
      }
      return [EXPECTED_SECONDS[rel] ?? 0, size];
    };
    // The serial group runs in SERIAL_ORDER.
    const serialRank = (s: TestSpecification): number => {
      const pass = s.project.name.endsWith('-serial') ? `${s.project.name.slice(0, -'-serial'.length)}:` : '';
      const i = SERIAL_ORDER.indexOf(`${pass}${path.relative(root, s.moduleId)}`);
      return i < 0 ? SERIAL_ORDER.length : i;
    };
    const keyed = files.map((s) => {
      const order = s.project.config.sequence.groupOrder;
      return { s, order, w: order === 0 ? weight(s) : ([-serialRank(s), 0] as [number, number]) };
    });
    keyed.sort((a, b) => a.order - b.order || b.w[0] - a.w[0] || b.w[1] - a.w[1]);
    return keyed.map((k) => k.s);
  }
}

/** Parallel workers for the parallel group (ETD_TEST_PARALLEL; default 4: most files wait on windows, sockets and namespaces, not the CPU). */
const parallel = Number(process.env.ETD_TEST_PARALLEL ?? 4);
/**
 * Files of the serial group at once (ETD_TEST_SERIAL; default 2: one per core of the CI machine,
 * each beside at most one other timed file instead of the parallel group's crowd; 1: alone).
 */
const serialLanes = Number(process.env.ETD_TEST_SERIAL ?? 2);

export interface Pass {
  /** Project name prefix: '' for the main pass, e.g. 'workers2' for a second pass. */
  name?: string;
  /** The pass's files (globs or paths). */
  files: readonly string[];
  /** Those of its files that run in the serial group (paths). */
  serial: readonly string[];
  /** Extra environment of the pass's test processes (e.g. ETD_TEST_WORKERS). */
  env?: Record<string, string>;
}

/**
 * The projects of one or more passes: each pass's files split into its parallel part (group 0,
 * beside every other pass's parallel part) and its serial part (group 1, one file at a time,
 * after the whole parallel group).
 */
export function projects(passes: readonly Pass[]): TestProjectConfiguration[] {
  const project = (
    name: string,
    pass: Pass,
    files: { include: string[]; exclude?: string[] },
    workers: number,
    group: number,
  ): TestProjectConfiguration => ({
    extends: true,
    test: {
      testTimeout: 60_000,
      hookTimeout: 60_000,
      name: `${pass.name ? `${pass.name}-` : ''}${name}`,
      ...(pass.env ? { env: pass.env } : {}),
      ...files,
      fileParallelism: workers > 1,
      maxWorkers: workers,
      sequence: { groupOrder: group },
    },
  });
  return passes.flatMap((pass) => [
    project('parallel', pass, { include: [...pass.files], exclude: [...pass.serial] }, parallel, 0),
    ...(pass.serial.length > 0 ? [project('serial', pass, { include: [...pass.serial] }, serialLanes, 1)] : []),
  ]);
}
