// Runs the built CLI (dist/src/cli.js) as a child process and follows its JSON log lines.

import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseStrictJson } from '../../src/util/strictJson.js';

export const CLI = path.join(__dirname, '../../dist/src/cli.js');

export function assertBuilt(): void {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first (npm test does)`);
}

export interface LogLine {
  msg: string;
  level: string;
  [k: string]: unknown;
}

export interface RunningEtd {
  child: ChildProcess;
  lines: LogLine[];
  /** stdout lines that are not strict JSON objects (invalid, or a key repeated: log pipelines reject those). */
  badLines: Array<{ line: string; problem: string }>;
  stderr: string;
  waitFor(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  exited: Promise<number | null>;
}

/** Starts `etd run -c FILE` (optionally under a wrapper such as `ip netns exec NS`). */
export function runEtd(configFile: string, wrapper: string[] = []): RunningEtd {
  assertBuilt();
  const argv = [...wrapper, process.execPath, CLI, 'run', '-c', configFile];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: LogLine[] = [];
  const waiters: Array<() => void> = [];
  let buf = '';
  const r: RunningEtd = {
    child,
    lines,
    badLines: [],
    stderr: '',
    exited: new Promise((resolve) => child.on('exit', (code) => resolve(code))),
    waitFor(pred, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = lines.find(pred);
          if (hit) {
            clearTimeout(timer);
            resolve(hit);
            return true;
          }
          return false;
        };
        const timer = setTimeout(() => {
          const i = waiters.indexOf(poll);
          if (i >= 0) waiters.splice(i, 1);
          reject(
            new Error(`timed out waiting for a log line; got:\n${lines.map((l) => JSON.stringify(l)).join('\n')}\nstderr: ${r.stderr}`),
          );
        }, timeoutMs);
        const poll = () => {
          if (check()) waiters.splice(waiters.indexOf(poll), 1);
        };
        if (!check()) waiters.push(poll);
        void r.exited.then((code) => {
          if (check()) return;
          clearTimeout(timer);
          reject(
            new Error(
              `etd exited (${code}) before the expected log line; stderr: ${r.stderr}\nlog:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`,
            ),
          );
        });
      });
    },
  };
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(parseStrictJson(line) as LogLine);
      } catch (e) {
        r.badLines.push({ line, problem: (e as Error).message });
        lines.push({ msg: line, level: 'raw' });
      }
      for (const w of [...waiters]) w();
    }
  });
  child.stderr!.on('data', (c: Buffer) => (r.stderr += c.toString()));
  return r;
}

/** Cleanup: SIGTERM to an etd still running, then up to 10 s for it to exit. */
export async function stopEtd(etd: RunningEtd | undefined): Promise<void> {
  if (!etd || etd.child.exitCode !== null || etd.child.signalCode !== null) return;
  etd.child.kill('SIGTERM');
  await Promise.race([etd.exited, new Promise((r) => setTimeout(r, 10_000))]);
}

/**
 * Starts `etd run -c FILE` inside namespace `ns` and waits for "etd started". It goes into
 * `running` at once, so a test's cleanup finds it even when the start fails.
 */
export async function startEtdInNetns(ns: string, file: string, running: RunningEtd[], timeoutMs = 20_000): Promise<RunningEtd> {
  const etd = runEtd(file, ['ip', 'netns', 'exec', ns]);
  running.push(etd);
  await etd.waitFor((l) => l.msg === 'etd started', timeoutMs);
  return etd;
}
