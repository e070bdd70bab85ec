import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // netns tests build labs with unique names, but they share the host kernel and
    // CPU; run files one at a time so timings and port use stay predictable.
    fileParallelism: false,
    reporters: ['default'],
  },
});
