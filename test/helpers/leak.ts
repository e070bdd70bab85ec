// Leak gauges for reliability tests: open fds (this process or a child), heap after forced full GCs, and a bounded wait.

import fs from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';
import { waitFor } from './wait.js';

/** Open file descriptors of `pid` (default: this process). */
export function fdCount(pid: number | 'self' = 'self'): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** Resident set size of `pid` in bytes. */
export function rssBytes(pid: number | 'self' = 'self'): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

let gcFn: (() => void) | undefined;

/**
 * vitest workers do not run with --expose-gc; the flag can still be set at run time, and a fresh
 * context then sees the `gc` function.
 */
function gc(): void {
  if (!gcFn) {
    v8.setFlagsFromString('--expose-gc');
    gcFn = vm.runInNewContext('gc') as () => void;
  }
  gcFn();
}

/** Heap in use after the event loop settled and several full collections (closed sockets release their handles late). */
export async function settledHeap(): Promise<number> {
  for (let i = 0; i < 6; i++) {
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 10));
    gc();
  }
  return process.memoryUsage().heapUsed;
}

/**
 * The old argument order of waitFor (test/helpers/wait.ts), kept only for
 * test/integration/engineThreads.test.ts, which another branch rewrites; new code calls waitFor.
 */
export function waitUntil(what: string | (() => string), cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<true> {
  return waitFor(cond, { what, timeout: timeoutMs });
}

export const MB = 1024 * 1024;
