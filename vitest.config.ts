// How `npm test` runs the test files: unit and integration files in parallel, then the netns and system files one at a time.
import { defineConfig, type TestProjectConfiguration } from 'vitest/config';

/**
 * Integration files that run in the serial group with the netns and system files, each for its reason:
 * they measure time or the process itself, and a neighbour's load would make them lie.
 */
export const SERIAL_INTEGRATION = [
  'test/integration/health.test.ts', // asserts check intervals to ±250 ms
  'test/integration/hostile.test.ts', // floods of thousands of sessions; counts heap and fds
  'test/integration/fuzz.test.ts', // CPU-bound; bounds each case's time
  'test/integration/guard.test.ts', // 15 ms gaps must split the bytes into separate reads
  'test/integration/dashboardBurst.test.ts', // Chromium under a verdict burst; measures frame gaps
  'test/integration/cache.test.ts', // asserts allowed and denied answers within 150 ms (239 ms seen beside other files)
  'test/integration/limits.test.ts', // opens 2,000 connections at once (1,950 held seen beside other files)
  'test/integration/agentFaults.test.ts', // a SIGHUP storm paced at 100 ms and a full tmpfs (its deny entry was missed beside other files)
];

/** Parallel workers for unit and integration files (ETD_TEST_PARALLEL; default 3: most of their time is spent waiting on windows and sockets, not CPU). */
const parallel = Number(process.env.ETD_TEST_PARALLEL ?? 3);

/**
 * Two projects: `parallel` (several files at once) first, then `serial` (one file at a time).
 * A file in both lists runs in the serial group only.
 */
export function projects(parallelFiles: readonly string[], serialFiles: readonly string[]): TestProjectConfiguration[] {
  const common = { testTimeout: 60_000, hookTimeout: 60_000 };
  return [
    {
      extends: true,
      test: {
        ...common,
        name: 'parallel',
        include: [...parallelFiles],
        exclude: [...serialFiles],
        fileParallelism: true,
        maxWorkers: parallel,
        sequence: { groupOrder: 0 },
      },
    },
    {
      extends: true,
      test: { ...common, name: 'serial', include: [...serialFiles], fileParallelism: false, maxWorkers: 1, sequence: { groupOrder: 1 } },
    },
  ];
}

export default defineConfig({
  test: {
    reporters: ['default'],
    // Tests start `etd run` as root with configs written for root (files in private temp dirs):
    // without this, a host that has an `etd` user would make every such etd drop to it. One
    // variable here covers every process the tests spawn (helpers, the demo, benches); the tests
    // of the drop itself remove it (test/netns/privilege.test.ts).
    env: { ETD_DROP_PRIVILEGES: 'no' },
    // The netns and system files share the host kernel (each builds its own uniquely named lab): one at a time.
    projects: projects(
      ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts'],
      ['test/netns/**/*.test.ts', 'test/system/**/*.test.ts', ...SERIAL_INTEGRATION],
    ),
  },
});
