// The netns suites' shared frame: a temp dir, the lab, a recorder in the backend namespace, the etd processes started, and their teardown.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { createLab, type JsonLineProcess, type Lab, type LabOptions, type Listen } from '../../lab/netns.js';
import { type RunningEtd, runEtd } from './cli.js';

/** A recorder on the first backend address of each family, port 25: what most suites record. */
export const firstBackends = (lab: Lab): Listen[] => [
  { address: lab.v4.backends[0], port: 25 },
  { address: lab.v6.backends[0], port: 25 },
];

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
  /**
   * Starts `etd run -c file` in the gateway namespace, under `wrapper` when given (e.g. setpriv
   * arguments), and tracks it in `running`; it does not wait (a test may expect it to exit).
   */
  spawn(file: string, wrapper?: readonly string[]): RunningEtd;
  /** Like spawn, and waits for "etd started". */
  start(file: string, timeoutMs?: number, wrapper?: readonly string[]): Promise<RunningEtd>;
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
    spawn(file, wrapper = []) {
      const etd = runEtd(file, ['ip', 'netns', 'exec', this.lab.ns.gateway, ...wrapper]);
      running.push(etd);
      return etd;
    },
    async start(file, timeoutMs = 15_000, wrapper = []) {
      const etd = this.spawn(file, wrapper);
      await etd.waitFor((l) => l.msg === 'etd started', timeoutMs);
      return etd;
    },
  };
}

/** A YAML flow value for an address: IPv6 addresses quoted (their colons). */
const yamlAddress = (a: string): string => (a.includes(':') ? `"${a}"` : a);

export interface VipConfig {
  /** Listener name → address, each on port 25 in vip mode (a listener needing more keys: `listenerLines`). */
  listeners?: Record<string, string>;
  /** Listener flow mappings written as they are (instead of `listeners`). */
  listenerLines?: readonly string[];
  /** Server name → address, port 25. */
  servers: Record<string, string>;
  /** detection.window (default 500ms). */
  window?: string;
  /** upstream.connectTimeout (default 3s). */
  connectTimeout?: string;
  /** The api key's value (default `{ enabled: false }`). */
  api?: string;
  /** state.path (default `":memory:"`). */
  statePath?: string;
  /** YAML put first (e.g. `user: x`). */
  top?: string;
  /** YAML appended at the end: more top-level keys (netfilter, cache, reputation, …). */
  extra?: string;
}

/**
 * A vip config as the netns suites write it: early talkers dropped, every server reached from the
 * client's address, no retries, no health checks. Tests edit the text a line at a time (a
 * listener, a server, the window), so its lines keep this form.
 */
export function vipConfig(c: VipConfig): string {
  const listeners =
    c.listenerLines ??
    Object.entries(c.listeners ?? {}).map(([name, a]) => `{ name: ${name}, address: ${yamlAddress(a)}, port: 25, mode: vip }`);
  const servers = Object.entries(c.servers).map(([name, a]) => `    - { name: ${name}, address: ${yamlAddress(a)}, port: 25 }`);
  return `${c.top ? `\n${c.top}` : ''}
listeners:
${listeners.map((l) => `  - ${l}`).join('\n')}
detection: { window: ${c.window ?? '500ms'}, action: drop }
upstream:
  source: clientip
  connectTimeout: ${c.connectTimeout ?? '3s'}
  retries: 0
  health: { enabled: false }
  servers:
${servers.join('\n')}
api: ${c.api ?? '{ enabled: false }'}
state: { path: ${c.statePath ?? '":memory:"'} }
log: { level: info }
${c.extra ?? ''}
`;
}

/** The lab's usual vip config: listeners smtp4 and smtp6 on the gateway's client side, backends b4 and b6. */
export function labVipConfig(lab: Lab, opts: Omit<VipConfig, 'listeners' | 'listenerLines' | 'servers'> = {}): string {
  return vipConfig({
    listeners: { smtp4: lab.v4.gatewayClientSide, smtp6: lab.v6.gatewayClientSide },
    servers: { b4: lab.v4.backends[0], b6: lab.v6.backends[0] },
    ...opts,
  });
}
