// The machine a benchmark ran on (CPUs, memory, kernel, versions, load), for the report: figures mean little without it.

import { execFileSync } from 'node:child_process';
import os from 'node:os';

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  memTotal: string;
  kernel: string;
  node: string;
  haproxy: string;
  postfix: string;
  fdLimit: string;
  /** 1/5/15-minute load averages at the start and the end of the run. */
  loadStart: number[];
  loadEnd?: number[];
}

function cmd(file: string, args: readonly string[]): string {
  try {
    return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
  } catch {
    return 'unknown';
  }
}

export function machineInfo(): MachineInfo {
  const gib = os.totalmem() / 1024 ** 3;
  return {
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memTotal: `${gib.toFixed(1)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    haproxy: cmd('haproxy', ['-v']).split('\n')[0] ?? 'unknown',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a dpkg-query format, not a template
    postfix: cmd('dpkg-query', ['-W', '-f', '${Version}', 'postfix']),
    fdLimit: cmd('sh', ['-c', 'ulimit -n']),
    loadStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

export function loadNow(): number[] {
  return os.loadavg().map((x) => Math.round(x * 100) / 100);
}
