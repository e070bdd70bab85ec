// Run a TypeScript entry file of this repo in a child `node`, optionally inside a network namespace (ip netns exec).
//
// Why a child: koffi/libnftables calls and sockets act in the calling process's network
// namespace, and a vitest worker cannot switch namespaces. The child is plain `node` with
// test/helpers/ts-loader/register.mjs imported first: it transpiles .ts on load with the
// `typescript` devDependency and maps `./x.js` imports to `./x.ts`, so it works in a fresh clone
// after `npm ci` — no build step, no tsx, no global installs, and no dependence on anyone else's
// files compiling (only the files the entry actually imports are transpiled; types are not checked).
// Every file keeps its real path, so `import.meta.url`-relative lookups (native addon) still work.

import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const REGISTER = path.join(REPO_ROOT, 'test', 'helpers', 'ts-loader', 'register.mjs');

/** The node arguments that run a .ts entry (absolute, or relative to the repo root). */
export function tsNodeArgs(entryTsFile: string, args: readonly string[] = []): string[] {
  return ['--enable-source-maps', '--import', REGISTER, path.resolve(REPO_ROOT, entryTsFile), ...args];
}

export interface TsSpawnOptions {
  /** Extra environment for the child (merged over process.env). */
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  readonly stdio?: SpawnOptions['stdio'];
  /**
   * A command that execs its arguments, put between `ip netns exec NS` and node, e.g.
   * ['setpriv', '--bounding-set=-all', '--inh-caps=-all'] to run as root without any capability.
   */
  readonly wrap?: readonly string[];
}

/**
 * Starts `ip netns exec <ns> node <loader> <entry> ...args` (or plain node when ns is undefined)
 * and returns the ChildProcess, for long-running children (e.g. etd itself in a lab). `ip netns
 * exec` (and a `wrap` such as setpriv) execs node in place, so child.pid is node's pid and
 * child.kill() reaches it.
 */
export function spawnTsInNetns(
  ns: string | undefined,
  entryTsFile: string,
  args: readonly string[] = [],
  opts: TsSpawnOptions = {},
): ChildProcess {
  const full = [...(opts.wrap ?? []), process.execPath, ...tsNodeArgs(entryTsFile, args)];
  const [cmd, ...argv] = ns === undefined ? full : ['ip', 'netns', 'exec', ns, ...full];
  if (cmd === undefined) throw new Error('unreachable: empty command line');
  return spawn(cmd, argv, {
    cwd: opts.cwd ?? REPO_ROOT,
    env: { ...process.env, ...opts.env },
    stdio: opts.stdio ?? ['pipe', 'pipe', 'pipe'],
  });
}

export interface RunResult {
  /** Exit code; null when killed by a signal (see `signal`, and `timedOut`). */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

export interface RunOptions extends Omit<TsSpawnOptions, 'stdio'> {
  /** Kill the child (SIGKILL) after this long. Default 30 s: every wait in tests is bounded. */
  readonly timeoutMs?: number;
  /** Written to the child's stdin, which is then closed. */
  readonly input?: string;
}

/**
 * Runs a .ts entry to completion inside namespace `ns` (undefined: in this namespace) and
 * collects its output. Never rejects for a non-zero exit: inspect `code`; rejects only when the
 * child cannot be spawned.
 */
export function runTsInNetns(
  ns: string | undefined,
  entryTsFile: string,
  args: readonly string[] = [],
  opts: RunOptions = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawnTsInNetns(ns, entryTsFile, args, opts);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
    child.stdin?.end(opts.input ?? '');
  });
}
