// The benchmark's pure parts: statistics, the split of held connections, profile summaries, figures with ratios and targets, options.

import { describe, expect, it } from 'vitest';
import { distribution, linearFit } from '../../bench/procfs.js';
import { splitAcross } from '../../bench/scenarios/held.js';
import { heapCensus, perConnection, summariseCpuProfile, moduleOf, type CpuProfile, type HeapSnapshot } from '../../bench/profile.js';
import { computeFigures, num, table, type BenchResult } from '../../bench/report.js';
import { parseOptions } from '../../bench/options.js';
import { sessionEndings } from '../../bench/logSummary.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

describe('statistics', () => {
  it('fits RSS over connections: slope in bytes per connection, r²', () => {
    const f = linearFit([0, 100, 200, 300, 400], [1000, 3000, 5000, 7000, 9000]);
    expect(f.slope).toBeCloseTo(20);
    expect(f.intercept).toBeCloseTo(1000);
    expect(f.r2).toBeCloseTo(1);
    expect(linearFit([0, 1, 2, 3], [0, 2, 0, 2]).r2).toBeLessThan(0.5);
    expect(() => linearFit([1], [1])).toThrow(/2 paired points/);
  });
  it('summarises samples with interpolated quantiles', () => {
    const d = distribution([5, 1, 4, 2, 3]);
    expect(d).toMatchObject({ n: 5, min: 1, median: 3, max: 5, mean: 3 });
    expect(d.p90).toBeCloseTo(4.6);
  });
  it('splits N held connections over client processes within the per-process limit', () => {
    expect(splitAcross(15_000, 5000)).toEqual([5000, 5000, 5000]);
    expect(splitAcross(15_001, 5000)).toEqual([3751, 3750, 3750, 3750]);
    expect(splitAcross(10, 5000)).toEqual([10]);
  });
});

describe('profile summaries', () => {
  it('charges self time from timeDeltas, groups by module and by phase, leaves idle out', () => {
    const p: CpuProfile = {
      startTime: 0,
      endTime: 10_000,
      nodes: [
        { id: 1, callFrame: { functionName: '(root)', url: '', lineNumber: -1 }, children: [2, 3, 5] },
        { id: 2, callFrame: { functionName: 'dispatch', url: 'file:///opt/etd/dist/src/proxy/engineDriver.js', lineNumber: 10 }, children: [4] },
        { id: 3, callFrame: { functionName: '(idle)', url: '', lineNumber: -1 } },
        { id: 4, callFrame: { functionName: 'begin', url: 'file:///opt/etd/dist/src/proxy/session.js', lineNumber: 99 } },
        { id: 5, callFrame: { functionName: '(garbage collector)', url: '', lineNumber: -1 } },
      ],
      samples: [2, 4, 4, 3, 5],
      timeDeltas: [1000, 1000, 1000, 5000, 2000],
    };
    const s = summariseCpuProfile(p);
    expect(s.totalMs).toBe(10);
    expect(s.busyMs).toBe(5);
    expect(s.functions[0]).toEqual({ name: 'begin proxy/session.js:100', ms: 2, pct: 40 });
    expect(s.modules.map((m) => m.name)).toEqual(['etd:proxy/session.js', 'GC', 'etd:proxy/engineDriver.js']);
    expect(s.phases.find((x) => x.name.startsWith('engine event batches'))).toMatchObject({ ms: 3, pct: 60 });
    expect(moduleOf('file:///x/node_modules/pino/lib/tools.js', 'asJson')).toBe('npm:pino');
    expect(moduleOf('node:internal/streams/readable', 'push')).toBe('node:streams');
  });

  it('diffs two heap censuses per connection, by constructor', () => {
    const snap = (sockets: number): HeapSnapshot => {
      const nodes: number[] = [];
      // fields: type, name, self_size; types: 0 hidden, 1 object, 2 string
      for (let i = 0; i < sockets; i++) nodes.push(1, 0, 272, 1, 1, 296, 2, 2, 40);
      nodes.push(1, 3, 1000);
      return { snapshot: { meta: { node_fields: ['type', 'name', 'self_size'], node_types: [['hidden', 'object', 'string']] } }, nodes, strings: ['Socket', 'Session', 'some text', 'Module'] };
    };
    const d = perConnection(heapCensus(snap(10)), heapCensus(snap(110)), 100);
    expect(d.totalBytes).toBe(272 + 296 + 40);
    expect(d.items.map((i) => [i.name, i.count, i.bytes])).toEqual([
      ['Session', 1, 296],
      ['Socket', 1, 272],
      ['(string)', 1, 40],
      ['Module', 0, 0],
    ]);
  });
});

describe('report', () => {
  const base = (): BenchResult => ({
    version: 1,
    startedAt: '',
    durationS: 1,
    quick: true,
    complete: true,
    machine: { cpus: 2, cpuModel: 'x', memTotal: '1 GiB', kernel: 'Linux', node: 'v20', haproxy: 'HAProxy', postfix: '3.7', fdLimit: '20000', loadStart: [0, 0, 0] },
    lab: { notes: [] },
    settings: {},
    held: {},
    sessions: {},
    relay: {},
    returning: {},
    profile: {},
    figures: [],
    problems: [],
  });
  const sessions = (perS: number, cpu: number) => ({ sessions: 1, parallel: 1, wallMs: 1, sessionsPerS: perS, cpuMs: 1, cpuMsPerSession: cpu, kernelShare: 0.5, endings: {}, problems: [], problemCount: 0, exit: 0 });

  it('gives each figure its etd/HAProxy ratio and checks the targets', () => {
    const r = base();
    r.sessions = { etd: sessions(1500, 0.4), haproxy: sessions(1000, 0.2) };
    const f = computeFigures(r);
    const rate = f.find((x) => x.id === 'sessions.rate');
    const cpu = f.find((x) => x.id === 'sessions.cpuPerSession');
    expect(rate).toMatchObject({ etd: 1500, haproxy: 1000, ratio: 1.5, met: true });
    expect(cpu).toMatchObject({ ratio: 2, met: false, target: 'etd/HAProxy ≤ 1.15' });
    expect(f.find((x) => x.id === 'relay.throughput')).toMatchObject({ etd: null, ratio: null, met: null });
    const t = table(f);
    expect(t).toMatch(/sessions per second/);
    expect(t).not.toMatch(/relay throughput/);
    expect(t).toMatch(/2\.00× .* NO/);
  });

  it('formats numbers with three significant digits', () => {
    expect([num(123456.7), num(12.34), num(1.234), num(0.01234), num(null)]).toEqual(['123,457', '12.3', '1.23', '0.012', '—']);
  });

  it('counts how sessions ended in either proxy log', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-bench-unit-'));
    const etdLog = path.join(dir, 'etd.log');
    const hapLog = path.join(dir, 'haproxy.log');
    fs.writeFileSync(etdLog, ['{"msg":"session","verdict":"passed","cause":"server_closed"}', '{"msg":"listening"}', '{"msg":"session","verdict":"passed","cause":"server_closed"}'].join('\n'));
    fs.writeFileSync(hapLog, '10.1.1.2:40000 [28/Nov/2026:04:00:00.000] ft_smtp bk_smtp/smtp1 1/0/102 456 CD 2/2/1/1/0 0/0\n');
    expect(sessionEndings('etd', etdLog)).toEqual({ 'passed/server_closed': 2 });
    expect(sessionEndings('haproxy', hapLog)).toEqual({ CD: 1 });
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('options', () => {
  it('has full defaults, --quick ones, and refuses unknown scenarios', () => {
    const full = parseOptions([]);
    expect(full).toMatchObject({ quick: false, held: 15_000, sessions: { parallel: 400, messages: 20_000, size: 2000 }, relay: { messages: 200, size: 10_000_000 }, deadlineMs: 600_000 });
    expect(full?.scenarios).toContain('profile');
    const quick = parseOptions(['--quick', '--held', '200']);
    expect(quick).toMatchObject({ quick: true, held: 200, haproxyThreads: false });
    expect(quick?.scenarios).not.toContain('profile');
    expect(parseOptions(['--only', 'held,relay'])?.scenarios).toEqual(['held', 'relay']);
    expect(parseOptions(['--deadline', '9999'])?.deadlineMs).toBe(600_000);
    expect(() => parseOptions(['--only', 'nope'])).toThrow(/unknown scenario nope/);
    expect(parseOptions(['--help'])).toBeUndefined();
  });
});
