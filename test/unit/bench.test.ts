// The benchmark's pure parts: statistics, the split of held connections, profile summaries, figures with ratios and targets, options, the endurance verdict.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { BenchLab } from '../../bench/benchLab.js';
import { etdConfig } from '../../bench/etdProxy.js';
import { DEFAULT_RULES, type EnduranceRun, heapUsedFromMetrics, judge, type Sample, sampleLine } from '../../bench/flatness.js';
import { haproxyConfig } from '../../bench/haproxyProxy.js';
import { sessionEndings } from '../../bench/logSummary.js';
import { parseOptions } from '../../bench/options.js';
import { distribution, linearFit } from '../../bench/procfs.js';
import { type CpuProfile, type HeapSnapshot, heapCensus, moduleOf, perConnection, summariseCpuProfile } from '../../bench/profile.js';
import { type BenchResult, computeFigures, num, table } from '../../bench/report.js';
import { splitAcross } from '../../bench/scenarios/held.js';

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
        {
          id: 2,
          callFrame: { functionName: 'dispatch', url: 'file:///opt/etd/dist/src/proxy/engineDriver.js', lineNumber: 10 },
          children: [4],
        },
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
      return {
        snapshot: { meta: { node_fields: ['type', 'name', 'self_size'], node_types: [['hidden', 'object', 'string']] } },
        nodes,
        strings: ['Socket', 'Session', 'some text', 'Module'],
      };
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
    machine: {
      cpus: 2,
      cpuModel: 'x',
      memTotal: '1 GiB',
      kernel: 'Linux',
      node: 'v20',
      haproxy: 'HAProxy',
      postfix: '3.7',
      fdLimit: '20000',
      loadStart: [0, 0, 0],
    },
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
  const sessions = (perS: number, cpu: number) => ({
    sessions: 1,
    parallel: 1,
    wallMs: 1,
    sessionsPerS: perS,
    cpuMs: 1,
    cpuMsPerSession: cpu,
    kernelShare: 0.5,
    endings: {},
    problems: [],
    problemCount: 0,
    exit: 0,
  });

  it('gives each figure the ratio of both pairs and checks the targets (issue 18)', () => {
    const r = base();
    r.sessions = {
      etd: sessions(1500, 0.4),
      haproxy: sessions(1000, 0.2),
      'etd-mt': sessions(2400, 0.3),
      'haproxy-mt': sessions(2000, 0.25),
    };
    const f = computeFigures(r);
    const rate = f.find((x) => x.id === 'sessions.rate');
    const cpu = f.find((x) => x.id === 'sessions.cpuPerSession');
    // sessions/s: etd workers auto ≥ 1.0 × HAProxy nbthread auto; CPU: etd workers 1 ≤ 0.85 × HAProxy nbthread 1.
    expect(rate).toMatchObject({
      etd: 1500,
      haproxy: 1000,
      ratio: 1.5,
      etdMt: 2400,
      haproxyMt: 2000,
      ratioMt: 1.2,
      met: true,
      target: 'etd-mt/HAProxy-mt ≥ 1',
    });
    expect(cpu).toMatchObject({ ratio: 2, met: false, target: 'etd/HAProxy ≤ 0.85' });
    expect(f.find((x) => x.id === 'relay.throughput')).toMatchObject({ etd: null, ratio: null, ratioMt: null, met: null });
    const t = table(f);
    expect(t).toMatch(/etd workers 1 .* HAProxy nbthread 1 .* etd workers auto .* HAProxy nbthread auto/);
    expect(t).toMatch(/sessions per second/);
    expect(t).not.toMatch(/relay throughput/);
    expect(t).toMatch(/2\.00× .* NO/);
    expect(t).toMatch(/1\.20× .* yes/);
    // Without the multi-thread pair the sessions/s target cannot be judged.
    r.sessions = { etd: sessions(1500, 0.4), haproxy: sessions(1000, 0.2) };
    expect(computeFigures(r).find((x) => x.id === 'sessions.rate')).toMatchObject({ ratio: 1.5, ratioMt: null, met: null });
  });

  it('formats numbers with three significant digits', () => {
    expect([num(123456.7), num(12.34), num(1.234), num(0.01234), num(null)]).toEqual(['123,457', '12.3', '1.23', '0.012', '—']);
  });

  it('counts how sessions ended in either proxy log', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-bench-unit-'));
    const etdLog = path.join(dir, 'etd.log');
    const hapLog = path.join(dir, 'haproxy.log');
    fs.writeFileSync(
      etdLog,
      [
        '{"msg":"session","verdict":"passed","cause":"server_closed"}',
        '{"msg":"listening"}',
        '{"msg":"session","verdict":"passed","cause":"server_closed"}',
      ].join('\n'),
    );
    fs.writeFileSync(hapLog, '10.1.1.2:40000 [28/Nov/2026:04:00:00.000] ft_smtp bk_smtp/smtp1 1/0/102 456 CD 2/2/1/1/0 0/0\n');
    expect(sessionEndings('etd', etdLog)).toEqual({ 'passed/server_closed': 2 });
    expect(sessionEndings('haproxy', hapLog)).toEqual({ CD: 1 });
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('contenders', () => {
  const bl = { proxyAddress: '10.9.1.1', backends: ['10.9.2.10', '10.9.2.11'] } as unknown as BenchLab;
  it('HAProxy logs every session with option tcplog in both thread settings; etd gets the workers key it is given', () => {
    for (const threads of [1, undefined]) {
      const cfg = haproxyConfig(bl, { windowMs: 100, tag: 't' }, 2525, threads);
      expect(cfg).toMatch(/^\s+option tcplog$/m);
      expect(cfg).toMatch(/^\s+log stdout format raw local0 info$/m);
      expect(cfg).toMatch(/^\s+log global$/m);
      expect(/nbthread 1/.test(cfg)).toBe(threads === 1);
    }
    expect(etdConfig(bl, { windowMs: 100, tag: 't', workers: 1 }, 25)).toMatch(/^workers: 1$/m);
    expect(etdConfig(bl, { windowMs: 100, tag: 't', workers: 'auto' }, 26)).toMatch(/^workers: auto$/m);
    expect(etdConfig(bl, { windowMs: 100, tag: 't' }, 25)).not.toMatch(/workers/);
  });
});

describe('options', () => {
  it('has full defaults, --quick ones, and refuses unknown scenarios', () => {
    const full = parseOptions([]);
    expect(full).toMatchObject({
      quick: false,
      held: 15_000,
      sessions: { parallel: 400, messages: 20_000, size: 2000 },
      relay: { messages: 200, size: 10_000_000 },
      deadlineMs: 600_000,
    });
    expect(full?.scenarios).toContain('profile');
    const quick = parseOptions(['--quick', '--held', '200']);
    expect(quick).toMatchObject({ quick: true, held: 200, haproxyThreads: false });
    expect(quick?.scenarios).not.toContain('profile');
    expect(full?.scenarios).toContain('dnsbl');
    expect(quick?.scenarios).not.toContain('dnsbl');
    expect(parseOptions(['--only', 'held,relay'])?.scenarios).toEqual(['held', 'relay']);
    expect(parseOptions(['--deadline', '9999'])?.deadlineMs).toBe(600_000);
    expect(() => parseOptions(['--only', 'nope'])).toThrow(/unknown scenario nope/);
    expect(parseOptions(['--help'])).toBeUndefined();
  });
});

describe('endurance verdict', () => {
  const MiB = 1024 * 1024;
  const rules = { ...DEFAULT_RULES, warmupMs: 60_000 };
  /** A 10-minute run sampled every 30 s at 1,000 sessions/s with 400 live connections, then the idle sample. */
  const samples = (rssMiB: (i: number) => number, deadlines: (i: number) => number = () => 1000): Sample[] => [
    ...Array.from(
      { length: 21 },
      (_, i): Sample => ({
        atMs: i * 30_000,
        phase: i === 0 ? 'start' : 'load',
        sessions: i * 30_000,
        perS: i ? 1000 : 0,
        rssBytes: rssMiB(i) * MiB,
        connections: i ? 400 : 0,
        fds: i ? 802 : 1,
        deadlines: i ? deadlines(i) : 0,
        bufferedBytes: 0,
        heapUsedBytes: 20 * MiB,
      }),
    ),
    {
      atMs: 603_000,
      phase: 'end',
      sessions: 600_001,
      perS: 0,
      rssBytes: rssMiB(21) * MiB,
      connections: 0,
      fds: 1,
      deadlines: 0,
      bufferedBytes: 0,
      heapUsedBytes: undefined,
    },
  ];
  const run = (s: Sample[], extra: Partial<EnduranceRun> = {}): EnduranceRun => ({
    samples: s,
    messages: 600_000,
    rounds: 20,
    sourceProblems: 0,
    aborted: undefined,
    ...extra,
  });

  it('passes flat RSS after warm-up (a large warm-up step does not count) and bounded engine counts', () => {
    const v = judge(run(samples((i) => (i < 2 ? 40 + i * 30 : 80 + (i % 3)))), rules);
    expect(v.problems).toEqual([]);
    expect(v.ok).toBe(true);
    expect(v.findings[0]).toMatch(/^ok {3}RSS flat: last third's max 82\.0 MB vs first third's 82\.0 MB after 60 s warm-up/);
    expect(v.findings.join('\n')).toMatch(
      /deadlines ≤ 3 × connections \+ 4 in every sample \(most: 1000 with 400 connections; last: 0 with 0\)/,
    );
  });

  it('fails RSS that keeps growing, and allows 8 MiB or 10 %, whichever is larger', () => {
    expect(judge(run(samples((i) => 60 + i)), rules).problems[0]).toMatch(/^RSS flat: last third's max 81\.0 MB vs first third's 68\.0 MB/);
    expect(judge(run(samples((i) => (i < 15 ? 60 : 67.9))), rules).ok).toBe(true);
    expect(judge(run(samples((i) => (i < 15 ? 60 : 68.1))), rules).ok).toBe(false);
    expect(judge(run(samples((i) => (i < 15 ? 200 : 219))), rules).ok).toBe(true);
    expect(judge(run(samples((i) => (i < 15 ? 200 : 221))), rules).ok).toBe(false);
  });

  it('fails deadlines that grow with the sessions instead of the live connections (the defect of issue 13)', () => {
    const v = judge(
      run(
        samples(
          () => 80,
          (i) => i * 60_000,
        ),
      ),
      rules,
    );
    expect(v.ok).toBe(false);
    expect(v.problems).toEqual([
      expect.stringMatching(
        /^deadlines ≤ 3 × connections \+ 4 in every sample \(most: 1200000 with 400 connections.*over the bound in 20 of 22$/,
      ),
    ]);
  });

  it('fails on smtp-source problems, missing sessions, an aborted run and too few samples', () => {
    const flat = samples(() => 80);
    expect(judge(run(flat, { sourceProblems: 3 }), rules).problems).toEqual(['smtp-source problems: 3']);
    expect(judge(run(flat, { messages: 700_000 }), rules).problems).toEqual([
      expect.stringMatching(/^sessions: etd passed 600,001, smtp-source sent 700,000/),
    ]);
    expect(judge(run(flat, { aborted: 'etd died' }), rules).problems).toEqual(['run: etd died']);
    expect(judge(run(flat.slice(0, 2)), rules).problems[0]).toMatch(/^RSS: 0 sample\(s\) after the 60 s warm-up/);
    expect(judge(run([]), rules).ok).toBe(false);
  });

  it('prints one line per sample and reads the heap from /metrics', () => {
    const s = samples(() => 80)[3] as Sample;
    expect(sampleLine(s)).toBe(
      '[01:30] load  sessions    90,000 (1,000/s) | rss  80.0 MB | engine conns  400 fds  802 deadlines  1000 buffered 0 KiB | heap 20.0 MB',
    );
    expect(heapUsedFromMetrics('# HELP x\nnodejs_heap_size_used_bytes 21495808\nnodejs_heap_size_total_bytes 3e7\n')).toBe(21_495_808);
    expect(heapUsedFromMetrics('nodejs_heap_size_used_bytes{app="etd"} 1.5e+7\n')).toBe(15_000_000);
    expect(heapUsedFromMetrics('')).toBeUndefined();
  });
});
