// Smoke test of the benchmark harness: `node dist/bench/run.js --quick` in the netns lab yields every figure for etd and HAProxy (no performance assertions).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assertBuilt } from '../helpers/cli.js';
import { skipPrivileged } from '../helpers/privileged.js';

const skip = skipPrivileged('benchmark harness (npm run bench --quick)');
const RUN = path.join(__dirname, '../../dist/bench/run.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-bench-test-'));

interface Figure {
  id: string;
  etd: number | null;
  haproxy: number | null;
  ratio: number | null;
}

/** Runs the harness; resolves with exit code and output. Killed by pid if it overruns. */
function runBench(args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [RUN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => {
      // SIGTERM lets the harness report and tear its lab down; SIGKILL if it does not.
      if (child.pid !== undefined) process.kill(child.pid, 'SIGTERM');
      setTimeout(() => child.exitCode === null && child.pid !== undefined && process.kill(child.pid, 'SIGKILL'), 20_000).unref();
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe.skipIf(skip)('npm run bench --quick', () => {
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('measures every scenario for etd and HAProxy and writes the JSON with every figure and ratio', async () => {
    assertBuilt();
    const json = path.join(dir, 'bench.json');
    const r = await runBench(['--quick', '--json', json], 110_000);
    const why = `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
    expect(r.code, why).toBe(0);
    const result = JSON.parse(fs.readFileSync(json, 'utf8')) as { complete: boolean; problems: string[]; figures: Figure[] };
    expect(result.complete, why).toBe(true);
    expect(result.problems, why).toEqual([]);
    expect(result.figures.map((f) => f.id)).toEqual([
      'held.rssPerConn',
      'held.acceptRate',
      'held.cpuPerConn',
      'sessions.rate',
      'sessions.cpuPerSession',
      'sessions.jsThreadPerSession',
      'relay.throughput',
      'relay.cpuPerMb',
      'returning.firstVisit',
      'returning.returning',
      'returning.added',
    ]);
    for (const f of result.figures) {
      expect(Number.isFinite(f.etd), `${f.id} etd`).toBe(true);
      // etd's own figure (its decision thread): HAProxy has no counterpart.
      if (f.id === 'sessions.jsThreadPerSession') continue;
      expect(Number.isFinite(f.haproxy), `${f.id} haproxy`).toBe(true);
      expect(Number.isFinite(f.ratio), `${f.id} ratio`).toBe(true);
    }
    // The table went to stdout.
    expect(r.stdout).toMatch(/\| held +\| RSS per held connection/);
  }, 130_000);
});
