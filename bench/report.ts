// The benchmark result: its JSON document, the etd/HAProxy ratio and target of each figure, and the printed table.

import fs from 'node:fs';
import path from 'node:path';
import type { MachineInfo } from './machine.js';
import type { ProxyKind } from './proxy.js';
import type { DnsblFigures } from './scenarios/dnsbl.js';
import type { HeldFigures } from './scenarios/held.js';
import type { CpuProfileFigures, HeapFigures } from './scenarios/profiling.js';
import type { ProtocolFigures } from './scenarios/protocol.js';
import type { DirectFigures, LatencyFigures } from './scenarios/returning.js';
import type { MachineShare, RelayFigures, SessionsFigures } from './scenarios/sessions.js';

type PerProxy<T> = Partial<Record<ProxyKind, T>>;

export interface BenchResult {
  version: 1;
  startedAt: string;
  durationS: number;
  quick: boolean;
  /** False when the run was cut short (deadline, signal). */
  complete: boolean;
  machine: MachineInfo;
  lab: { notes: string[] };
  settings: Record<string, unknown>;
  held: PerProxy<HeldFigures>;
  sessions: PerProxy<SessionsFigures>;
  relay: PerProxy<RelayFigures>;
  returning: { direct?: DirectFigures } & PerProxy<LatencyFigures>;
  profile: { cpu?: CpuProfileFigures; heap?: HeapFigures };
  /** etd with three DNSBL lists against none (issue 14); absent when not run. */
  dnsbl?: DnsblFigures;
  /** etd with every protocol test at reject against off (issue 24); absent when not run. */
  protocol?: ProtocolFigures;
  figures: Figure[];
  /** Scenario runs that failed or were skipped, with the reason. */
  problems: string[];
}

/** One figure for both pairs: etd workers 1 against HAProxy nbthread 1, etd workers auto against HAProxy nbthread auto. */
export interface Figure {
  id: string;
  scenario: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  etd: number | null;
  haproxy: number | null;
  /** etd with `workers: auto`, where measured. */
  etdMt: number | null;
  /** HAProxy with its default nbthread, where measured. */
  haproxyMt: number | null;
  /** etd / HAProxy (nbthread 1). */
  ratio: number | null;
  /** etd workers auto / HAProxy nbthread auto. */
  ratioMt: number | null;
  /** The issue's target, in words, or null (informational figure). */
  target: string | null;
  met: boolean | null;
}

interface Target {
  text: string;
  /** Which pair's ratio the target is about. */
  pair: 'single' | 'mt';
  met: (ratio: number | null, etd: number | null) => boolean | null;
}

interface FigureDef {
  id: string;
  scenario: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  value: (r: BenchResult, k: ProxyKind) => number | undefined;
  target?: Target;
}

const ratioAtMost = (max: number, pair: 'single' | 'mt' = 'single'): Target => ({
  text: pair === 'single' ? `etd/HAProxy ≤ ${max}` : `etd-mt/HAProxy-mt ≤ ${max}`,
  pair,
  met: (ratio) => (ratio === null ? null : ratio <= max),
});
const ratioAtLeast = (min: number, pair: 'single' | 'mt' = 'single'): Target => ({
  text: pair === 'single' ? `etd/HAProxy ≥ ${min}` : `etd-mt/HAProxy-mt ≥ ${min}`,
  pair,
  met: (ratio) => (ratio === null ? null : ratio >= min),
});

const DEFS: FigureDef[] = [
  {
    id: 'held.rssPerConn',
    scenario: 'held',
    label: 'RSS per held connection',
    unit: 'bytes',
    better: 'lower',
    value: (r, k) => r.held[k]?.rssPerConnBytes,
    target: ratioAtMost(0.4),
  },
  {
    id: 'held.acceptRate',
    scenario: 'held',
    label: 'accept rate (full accept queue)',
    unit: 'conn/s',
    better: 'higher',
    value: (r, k) => r.held[k]?.acceptPerS,
  },
  {
    id: 'held.cpuPerConn',
    scenario: 'held',
    label: 'CPU per accepted connection',
    unit: 'µs',
    better: 'lower',
    value: (r, k) => r.held[k]?.cpuUsPerConn,
  },
  {
    id: 'sessions.rate',
    scenario: 'sessions',
    label: 'sessions per second',
    unit: 'sessions/s',
    better: 'higher',
    value: (r, k) => r.sessions[k]?.sessionsPerS,
    target: ratioAtLeast(1.0, 'mt'),
  },
  {
    id: 'sessions.cpuPerSession',
    scenario: 'sessions',
    label: 'proxy CPU per session',
    unit: 'ms',
    better: 'lower',
    value: (r, k) => r.sessions[k]?.cpuMsPerSession,
    target: ratioAtMost(0.85),
  },
  // etd only: the one decision thread's ceiling (sessions/s = 1e6 / this, if nothing else bound it).
  {
    id: 'sessions.jsThreadPerSession',
    scenario: 'sessions',
    label: 'etd decision (JS) thread CPU per session',
    unit: 'µs',
    better: 'lower',
    value: (r, k) => (k === 'etd' || k === 'etd-mt' ? r.sessions[k]?.mainThreadUsPerSession : undefined),
    target: { text: 'etd ≤ 40 µs (≥ 25,000 sessions/s)', pair: 'single', met: (_ratio, etd) => (etd === null ? null : etd <= 40) },
  },
  {
    id: 'relay.throughput',
    scenario: 'relay',
    label: 'relay throughput',
    unit: 'MB/s',
    better: 'higher',
    value: (r, k) => r.relay[k]?.mbPerS,
    target: ratioAtLeast(0.95),
  },
  {
    id: 'relay.cpuPerMb',
    scenario: 'relay',
    label: 'proxy CPU per MB',
    unit: 'ms',
    better: 'lower',
    value: (r, k) => r.relay[k]?.cpuMsPerMb,
  },
  {
    id: 'returning.firstVisit',
    scenario: 'returning',
    label: 'connect→greeting, first visit (median)',
    unit: 'ms',
    better: 'lower',
    value: (r, k) => r.returning[k]?.firstVisit.median,
  },
  {
    id: 'returning.returning',
    scenario: 'returning',
    label: 'connect→greeting, returning sender (median)',
    unit: 'ms',
    better: 'lower',
    value: (r, k) => r.returning[k]?.returning.median,
  },
  {
    id: 'returning.added',
    scenario: 'returning',
    label: 'added latency, returning sender (vs direct)',
    unit: 'ms',
    better: 'lower',
    value: (r, k) => r.returning[k]?.addedMs,
    target: { text: 'etd < 1 ms', pair: 'single', met: (_ratio, etd) => (etd === null ? null : etd < 1) },
  },
  // etd against itself (HAProxy has no DNSBL): the etd column is the figure.
  {
    id: 'dnsbl.ratio',
    scenario: 'dnsbl',
    label: 'sessions/s, three DNSBL lists ÷ none',
    unit: '×',
    better: 'higher',
    value: (r, k) => (k === 'etd' ? r.dnsbl?.ratio : undefined),
    target: { text: 'etd ≥ 0.9×', pair: 'single', met: (_ratio, etd) => (etd === null ? null : etd >= 0.9) },
  },
  {
    id: 'dnsbl.cpuPerSession',
    scenario: 'dnsbl',
    label: 'etd CPU per session, three DNSBL lists',
    unit: 'ms',
    better: 'lower',
    value: (r, k) => (k === 'etd' ? r.dnsbl?.withLists.cpuMsPerSession : undefined),
  },
  {
    id: 'dnsbl.returningAdded',
    scenario: 'dnsbl',
    label: 'added latency, returning sender with DNSBL lists',
    unit: 'ms',
    better: 'lower',
    value: (r, k) => (k === 'etd' ? r.dnsbl?.returning?.addedMs : undefined),
    target: { text: 'etd < 1 ms', pair: 'single', met: (_ratio, etd) => (etd === null ? null : etd < 1) },
  },
  {
    id: 'protocol.ratio',
    scenario: 'protocol',
    label: 'sessions/s, every protocol test at reject ÷ off',
    unit: '×',
    better: 'higher',
    value: (r, k) => (k === 'etd' ? r.protocol?.ratio : undefined),
    target: { text: 'etd ≥ 0.97×', pair: 'single', met: (_ratio, etd) => (etd === null ? null : etd >= 0.97) },
  },
  {
    id: 'protocol.cpuPerSession',
    scenario: 'protocol',
    label: 'etd CPU per session, every protocol test at reject',
    unit: 'ms',
    better: 'lower',
    value: (r, k) => (k === 'etd' && r.protocol ? median(r.protocol.reject.map((x) => x.cpuMsPerSession)) : undefined),
  },
  {
    id: 'protocol.relayRatio',
    scenario: 'protocol',
    label: 'relay MB/s, every protocol test at reject ÷ off',
    unit: '×',
    better: 'higher',
    value: (r, k) => (k === 'etd' ? r.protocol?.relay?.ratio : undefined),
    target: { text: 'etd ≥ 0.98×', pair: 'single', met: (_ratio, etd) => (etd === null ? null : etd >= 0.98) },
  },
];

const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;

const orNull = (v: number | undefined): number | null => (v === undefined || !Number.isFinite(v) ? null : v);

export function computeFigures(r: BenchResult): Figure[] {
  // The dnsbl rows only when that scenario ran (it is not part of --quick).
  return DEFS.filter(
    (d) => (d.scenario !== 'dnsbl' || r.dnsbl !== undefined) && (d.scenario !== 'protocol' || r.protocol !== undefined),
  ).map((d) => {
    const etd = orNull(d.value(r, 'etd'));
    const haproxy = orNull(d.value(r, 'haproxy'));
    const etdMt = orNull(d.value(r, 'etd-mt'));
    const haproxyMt = orNull(d.value(r, 'haproxy-mt'));
    const div = (a: number | null, b: number | null): number | null => (a !== null && b !== null && b !== 0 ? a / b : null);
    const ratio = div(etd, haproxy);
    const ratioMt = div(etdMt, haproxyMt);
    const t = d.target;
    return {
      id: d.id,
      scenario: d.scenario,
      label: d.label,
      unit: d.unit,
      better: d.better,
      etd,
      haproxy,
      etdMt,
      haproxyMt,
      ratio,
      ratioMt,
      target: t?.text ?? null,
      met: t ? (t.pair === 'single' ? t.met(ratio, etd) : t.met(ratioMt, etdMt)) : null,
    };
  });
}

/** Three significant digits, thousands separated; "—" for a missing value. */
export function num(v: number | null): string {
  if (v === null) return '—';
  const a = Math.abs(v);
  if (a >= 100) return Math.round(v).toLocaleString('en-US');
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(2);
}

/** The figures as a Markdown table (readable on a terminal, pasteable into docs/performance.md). */
export function table(all: readonly Figure[]): string {
  // Scenarios that were not run (--only) have no row at all.
  const figures = all.filter((f) => f.etd !== null || f.haproxy !== null || f.etdMt !== null || f.haproxyMt !== null);
  const header = [
    'scenario',
    'figure',
    'unit',
    'etd workers 1',
    'HAProxy nbthread 1',
    'ratio',
    'etd workers auto',
    'HAProxy nbthread auto',
    'ratio (auto)',
    'target',
    'met',
  ];
  const x = (v: number | null): string => (v === null ? '—' : `${v.toFixed(2)}×`);
  const rows = figures.map((f) => [
    f.scenario,
    f.label,
    f.unit,
    num(f.etd),
    num(f.haproxy),
    x(f.ratio),
    num(f.etdMt),
    num(f.haproxyMt),
    x(f.ratioMt),
    f.target ?? '',
    f.met === null ? '' : f.met ? 'yes' : 'NO',
  ]);
  const numeric = (i: number): boolean => i >= 3 && i <= 8;
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (cells: string[]): string =>
    `| ${cells.map((c, i) => (numeric(i) ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (numeric(i) ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`;
  return [line(header), sep, ...rows.map(line)].join('\n');
}

/** Lines under the table: the baseline, the machine, sanity counts, and what went wrong. */
export function notes(r: BenchResult): string {
  const out: string[] = [];
  const d = r.returning.direct;
  if (d)
    out.push(`direct connection to a backend (no proxy): connect→greeting median ${num(d.direct.median)} ms, p90 ${num(d.direct.p90)} ms`);
  for (const k of ['etd', 'haproxy', 'etd-mt', 'haproxy-mt'] as const) {
    const h = r.held[k];
    if (h)
      out.push(
        `held ${k}: ${h.held} of ${h.n} held, fit r² ${h.r2.toFixed(3)}, client failures ${h.clients.failed}, closed by proxy ${h.clients.closedByPeer}, idle CPU ${num(h.idleCpuMsPerS)} ms/s`,
      );
  }
  type Run = {
    kernelShare: number;
    machine?: MachineShare;
    endings: Record<string, number>;
    problemCount: number;
    problems: string[];
    exit: number | string;
  };
  const runs: Array<[string, PerProxy<Run>]> = [
    ['sessions', r.sessions],
    ['relay', r.relay],
  ];
  for (const [name, set] of runs) {
    const split = Object.entries(set).map(([k, v]) => `${k} ${Math.round(v.kernelShare * 100)}%`);
    if (split.length) out.push(`${name}: kernel (system) share of the proxy's CPU time: ${split.join(', ')}`);
    for (const [k, v] of Object.entries(set)) {
      const m = v.machine;
      if (!m) continue;
      const pct = (x: number): string => `${Math.round(x * 100)}%`;
      out.push(
        `${name} ${k}: CPU of ${m.cpus} cores over the run: proxy ${pct(m.proxyShare)}, load generators (smtp-source + 2 smtp-sink) ${pct(m.loadGeneratorsShare)}, whole machine busy ${pct(m.busyShare)}`,
      );
    }
    for (const [k, v] of Object.entries(set)) {
      const endings = Object.entries(v.endings)
        .sort((a, b) => b[1] - a[1])
        .map(([e, c]) => `${e} ${c}`);
      out.push(`${name} ${k}: sessions ended (proxy log): ${endings.join(', ') || 'none logged'}`);
    }
    for (const [k, v] of Object.entries(set))
      if (v.problemCount > 0 || v.exit !== 0)
        out.push(`${name} ${k}: smtp-source exit ${v.exit}, ${v.problemCount} warnings (${v.problems.slice(0, 2).join(' | ')})`);
  }
  if (r.dnsbl) out.push(...dnsblLines(r.dnsbl));
  const m = r.machine;
  out.push(
    `machine: ${m.cpus} × ${m.cpuModel}, ${m.memTotal}, ${m.kernel}, node ${m.node}, ${m.haproxy}, postfix ${m.postfix}, fd limit ${m.fdLimit}`,
  );
  out.push(
    `load average at start ${m.loadStart.join(' ')}${m.loadEnd ? `, at end ${m.loadEnd.join(' ')}` : ''}; run took ${r.durationS} s${r.complete ? '' : ' (INCOMPLETE)'}`,
  );
  for (const p of r.problems) out.push(`problem: ${p}`);
  return out.join('\n');
}

export function profileText(r: BenchResult): string {
  const out: string[] = [];
  const c = r.profile.cpu;
  if (c) {
    out.push(`etd CPU profile (${c.sessions} sessions, ${c.busyMs} ms busy): self time by module`);
    for (const m of c.modules.slice(0, 12)) out.push(`  ${m.pct.toFixed(1).padStart(5)}%  ${m.name}`);
    out.push('  time in (and under) the entry points of the work (they nest, so they overlap)');
    for (const ph of c.phases) out.push(`  ${ph.pct.toFixed(1).padStart(5)}%  ${ph.name}`);
    out.push('  top functions by self time');
    for (const f of c.functions.slice(0, 15)) out.push(`  ${f.pct.toFixed(1).padStart(5)}%  ${f.name}`);
  }
  const h = r.profile.heap;
  if (h) {
    out.push(`etd heap per held connection (${h.connections} held): ${num(h.heapBytesPerConn)} bytes of JS heap`);
    for (const i of h.items.slice(0, 15)) out.push(`  ${String(i.bytes).padStart(6)} B  ${i.count.toFixed(2).padStart(5)} × ${i.name}`);
  }
  return out.join('\n');
}

export function writeJson(file: string, r: BenchResult): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${JSON.stringify(r, null, 2)}\n`);
}

/** The dnsbl scenario's figures: etd with three lists against etd without, and the returning sender with lists. */
export function dnsblLines(d: DnsblFigures): string[] {
  const run = (name: string, x: DnsblFigures['without']) =>
    `dnsbl ${name}: ${num(x.sessionsPerS)} sessions/s, CPU ${num(x.cpuMsPerSession)} ms/session, ${num(x.queriesPerSession)} DNS queries/session, ended: ${Object.entries(
      x.endings,
    )
      .filter(([, n]) => n > 0)
      .map(([v, n]) => `${v} ${n}`)
      .join(', ')}`;
  const out = [run('without lists', d.without), run('three lists  ', d.withLists)];
  out.push(`dnsbl: sessions/s with three lists ÷ without = ${d.ratio.toFixed(2)}× (target ≥ 0.9×: ${d.ratio >= 0.9 ? 'met' : 'NOT met'})`);
  if (d.returning) {
    const r = d.returning;
    out.push(
      `dnsbl returning sender (lists on, answers cached, pass cache): connect→greeting median ${num(r.returning.median)} ms (p90 ${num(r.returning.p90)}), first visit ${num(r.firstVisit.median)} ms; added vs direct ${num(r.addedMs)} ms (target < 1 ms: ${r.addedMs < 1 ? 'met' : 'NOT met'})`,
    );
  }
  return out;
}
