// The last hour as three uPlot charts (sessions/s by verdict, held and relaying, backend connect latency), fed by GET /v1/history and appended to each second.

import uPlot from 'uplot';
import type { HistoryColumns } from '../../src/api/history.js';
import { VERDICTS } from './verdicts.js';

/** The answer of GET /v1/history: the ring's columns and the second they end before. */
export type History = HistoryColumns & { readonly now: number };

const HOUR = 3600;

interface Chart {
  readonly plot: uPlot;
  readonly columns: Array<Array<number | null>>;
}

function series(label: string, stroke: string, dash?: number[], points = false): uPlot.Series {
  return { label, stroke, width: 1.5, ...(dash ? { dash } : {}), spanGaps: false, points: { show: points, size: 4, fill: stroke } };
}

function makeChart(el: HTMLElement, title: string, unit: string, list: uPlot.Series[]): Chart {
  const opts: uPlot.Options = {
    title,
    width: Math.max(el.clientWidth, 280),
    height: 180,
    series: [{}, ...list],
    axes: [{}, { label: unit, size: 50 }],
    scales: { x: { time: true } },
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
  };
  const columns: Array<Array<number | null>> = [[], ...list.map(() => [])];
  const plot = new uPlot(opts, columns as uPlot.AlignedData, el);
  return { plot, columns };
}

/** Verdict lines are told apart by dash pattern and legend label too, not by colour alone. */
const DASHES: Array<number[] | undefined> = [undefined, [6, 3], [2, 2], [8, 2, 2, 2], [4, 4], [1, 3], [10, 4]];

export class HistoryCharts {
  private readonly charts: Chart[] = [];
  lastT = 0;

  constructor(sessions: HTMLElement, counts: HTMLElement, latency: HTMLElement) {
    this.charts.push(
      makeChart(
        sessions,
        'sessions per second, by verdict',
        'per s',
        VERDICTS.map((v, i) => series(v.label, v.colour, DASHES[i % DASHES.length])),
      ),
      makeChart(counts, 'held and relaying connections', 'connections', [series('held', '#b35900'), series('relaying', '#1f6fb2', [6, 3])]),
      makeChart(latency, 'backend connect latency', 'ms', [
        series('mean', '#1f6fb2', undefined, true),
        series('worst', '#8a3ab9', [6, 3], true),
      ]),
    );
    const resize = new ResizeObserver(() => {
      for (const [c, el] of [
        [this.charts[0]!, sessions],
        [this.charts[1]!, counts],
        [this.charts[2]!, latency],
      ] as const) {
        c.plot.setSize({ width: Math.max(el.clientWidth, 280), height: 180 });
      }
    });
    for (const el of [sessions, counts, latency]) resize.observe(el);
  }

  /** Appends the seconds after lastT and keeps one hour. */
  append(h: History): void {
    const start = h.t.findIndex((t) => t > this.lastT);
    if (start < 0) return;
    const rows: Array<Array<Array<number | null>>> = [
      [h.t, ...VERDICTS.map((v) => h.verdicts[v.id])],
      [h.t, h.held, h.relaying],
      [h.t, h.connectMsAvg, h.connectMsMax],
    ];
    rows.forEach((cols, i) => {
      const chart = this.charts[i]!;
      cols.forEach((col, j) => {
        const target = chart.columns[j]!;
        for (let k = start; k < col.length; k++) target.push(col[k] ?? null);
        if (target.length > HOUR) target.splice(0, target.length - HOUR);
      });
      chart.plot.setData(chart.columns as uPlot.AlignedData);
    });
    this.lastT = h.t[h.t.length - 1] ?? this.lastT;
  }
}
