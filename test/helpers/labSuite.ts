// The netns suites' shared frame: a temp dir, the lab, a recorder in the backend namespace, the etd processes started, and their teardown.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { createLab, type JsonLineProcess, type Lab, type LabOptions, type Listen } from '../../lab/netns.js';
import { type RunningEtd, startEtdInNetns } from './cli.js';

export interface LabSuiteOptions {
  /** Names the temp dir: etd-<name>-XXXXXX. */
  name: string;
  lab?: LabOptions;
  /** The recorder's listen addresses in the backend namespace; none: no recorder. */
  recorder?: (lab: Lab) => readonly Listen[];
  /** How a test's leftover etd is stopped after it (default SIGKILL: a failed test must not leave it holding port 25). */
  leftoverSignal?: NodeJS.Signals;
}

export interface LabSuite {
  /** The lab, once beforeAll ran. */
  readonly lab: Lab;
  /** The recorder, once beforeAll ran (only when the options asked for one). */
  readonly recorder: JsonLineProcess;
  /** This suite's temp dir (config files), removed after all. */
  readonly dir: string;
  /** Every etd this suite started, in order. */
  readonly running: RunningEtd[];
  /** Writes `text` to a new config file in `dir` and returns its path. */
  writeConfig(text: string): string;
  /** Starts `etd run -c file` in the gateway namespace and waits for "etd started". */
  start(file: string, timeoutMs?: number): Promise<RunningEtd>;
}

/**
 * Call inside the suite's describe (so a skipped suite builds nothing). Registers: beforeAll (lab,
 * recorder), afterEach (leftover etds stopped), afterAll (every etd killed, lab destroyed, dir
 * removed). A suite's own afterAll, registered after this call, runs before this teardown.
 */
export function labSuite(opts: LabSuiteOptions): LabSuite {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `etd-${opts.name}-`));
  const running: RunningEtd[] = [];
  let lab: Lab | undefined;
  let recorder: JsonLineProcess | undefined;
  let files = 0;

  beforeAll(async () => {
    lab = await createLab(opts.lab);
    if (opts.recorder) recorder = await lab.startRecorder(lab.ns.backend, opts.recorder(lab));
  }, 60_000);

  afterEach(async () => {
    for (const e of running) {
      if (e.child.exitCode === null && e.child.signalCode === null) {
        e.child.kill(opts.leftoverSignal ?? 'SIGKILL');
        await e.exited;
      }
    }
  });

  afterAll(async () => {
    for (const e of running) if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill('SIGKILL');
    await lab?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  return {
    get lab() {
      if (!lab) throw new Error('the lab is not built yet (labSuite: use it in a test or a later hook)');
      return lab;
    },
    get recorder() {
      if (!recorder) throw new Error('no recorder (labSuite: pass the recorder option)');
      return recorder;
    },
    dir,
    running,
    writeConfig(text) {
      const file = path.join(dir, `etd-${files++}.yaml`);
      fs.writeFileSync(file, text);
      return file;
    },
    start(file, timeoutMs = 15_000) {
      return startEtdInNetns(this.lab.ns.gateway, file, running, timeoutMs);
    },
  };
}
