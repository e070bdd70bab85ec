// The second pass of `npm test` alone: the in-process proxy scenarios again, with 2 engine threads (ETD_TEST_WORKERS=2, docs/workers.md). `npm test` runs it inside its one vitest run (vitest.config.ts, project names workers2-*); this config runs it by itself.
//
// Not here: test/integration/fuzz.test.ts (it fuzzes the API, which runs on the one JS thread
// whatever the engine thread count: a second pass would repeat it); test/integration/admission.test.ts (ETD_ENGINE_FAULTS numbers each engine thread's calls) and
// hostile.test.ts (it counts one thread's Session objects and heap), which pin one thread; the
// CLI and netns tests, which run `etd run` with `workers: auto` in the first pass.
import { defineConfig } from 'vitest/config';
import { LongestFirst, projects, SERIAL } from './test/schedule.js';

export const WORKER_SCENARIOS = [
  'test/integration/proxy.test.ts',
  'test/integration/hold.test.ts',
  'test/integration/limits.test.ts',
  'test/integration/health.test.ts',
  'test/integration/backendFaults.test.ts',
  'test/integration/agentFaults.test.ts',
  'test/integration/cache.test.ts',
  'test/integration/api.test.ts',
  'test/integration/dashboardApi.test.ts',
  'test/integration/postfix.test.ts',
  'test/integration/cluster.test.ts',
  'test/integration/clusterDnsbl.test.ts',
  'test/integration/protocolTests.test.ts',
];

export default defineConfig({
  test: {
    reporters: ['default'],
    // As in vitest.config.ts: etd started as root by a test stays root.
    env: { ETD_DROP_PRIVILEGES: 'no' },
    sequence: { sequencer: LongestFirst },
    projects: projects([
      {
        name: 'workers2',
        files: WORKER_SCENARIOS,
        serial: WORKER_SCENARIOS.filter((f) => SERIAL.includes(f)),
        env: { ETD_TEST_WORKERS: '2' },
      },
    ]),
  },
});
