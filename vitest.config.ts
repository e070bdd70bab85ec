// How `npm test` runs the test files: one vitest run of both passes (the suite, and the proxy scenarios again with 2 engine threads); test/schedule.ts says what runs side by side and what alone.
import { defineConfig } from 'vitest/config';
import { LongestFirst, projects, SERIAL } from './test/schedule.js';
import { WORKER_SCENARIOS } from './vitest.workers.config.js';

export default defineConfig({
  test: {
    reporters: ['default'],
    // Tests start `etd run` as root with configs written for root (files in private temp dirs):
    // without this, a host that has an `etd` user would make every such etd drop to it. One
    // variable here covers every process the tests spawn (helpers, the demo, benches); the tests
    // of the drop itself remove it (test/netns/privilege.test.ts).
    env: { ETD_DROP_PRIVILEGES: 'no' },
    sequence: { sequencer: LongestFirst },
    projects: projects([
      // The suite: every file, one engine thread in-process (etd run from the CLI and the netns labs use `auto`).
      {
        files: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts', 'test/netns/**/*.test.ts', 'test/system/**/*.test.ts'],
        serial: SERIAL,
      },
      // The second pass (vitest.workers.config.ts runs it alone): the in-process proxy scenarios with 2 engine threads.
      {
        name: 'workers2',
        files: WORKER_SCENARIOS,
        serial: WORKER_SCENARIOS.filter((f) => SERIAL.includes(f)),
        env: { ETD_TEST_WORKERS: '2' },
      },
    ]),
  },
});
