// What every benchmark scenario gets: the lab, the options, a progress printer and the time budget.

import type { BenchLab } from './benchLab.js';
import type { BenchOptions } from './options.js';

export interface BenchContext {
  readonly bl: BenchLab;
  readonly opts: BenchOptions;
  /** Progress line on stderr (stdout carries the table). */
  say(line: string): void;
  /** Milliseconds left before the run must wrap up (the hard deadline minus teardown time). */
  left(): number;
  /** The etd build accepts the top-level `workers` key (run.ts asks `etd check`); without it etd-mt cannot run. */
  readonly etdWorkers?: boolean;
}

/** Thrown when a step would not fit into what is left of the run's time budget. */
export class OutOfTime extends Error {
  constructor(what: string, neededMs: number, leftMs: number) {
    super(
      `${what}: skipped, it needs about ${Math.round(neededMs / 1000)} s and ${Math.round(leftMs / 1000)} s are left of the run's time budget`,
    );
    this.name = 'OutOfTime';
  }
}

/** Throws OutOfTime unless `neededMs` fit into the budget. */
export function ensureTime(ctx: BenchContext, what: string, neededMs: number): void {
  const left = ctx.left();
  if (left < neededMs) throw new OutOfTime(what, neededMs, left);
}
