// The dashboard's "Now" tiles and the last hour: GET /v1/status each second, GET /v1/history for the charts and the rates.

import type { Verdict } from '../../src/proxy/verdict.js';
import { get } from './api.js';
import type { History, HistoryCharts } from './charts.js';
import { $, el, ms } from './dom.js';
import { VERDICTS } from './verdicts.js';

export interface Status {
  version: string;
  uptimeSeconds: number;
  listeners: Array<{ name: string; mode: string; state?: string; addresses: string[] }>;
  connections: { held: number; relaying: number; total: number };
  backends: { up: number; total: number };
  stress: { active: boolean; windowMs: number; enterAbove: number; leaveBelow: number; changes: number };
}

export function paintStatus(s: Status): void {
  $('version').textContent = `v${s.version}`;
  $('uptime').textContent = `up ${Math.floor(s.uptimeSeconds / 3600)}h ${Math.floor((s.uptimeSeconds % 3600) / 60)}m`;
  $('now-held').textContent = String(s.connections.held);
  $('now-relaying').textContent = String(s.connections.relaying);
  $('now-window').textContent = ms(s.stress.windowMs);
  $('now-stress').textContent = s.stress.active
    ? `⚠ stress: more than ${s.stress.enterAbove} held; normal again below ${s.stress.leaveBelow}`
    : `normal (stress above ${s.stress.enterAbove} held)`;
  $('now-stress').className = s.stress.active ? 'sub warn-text' : 'sub';
  $('now-backends').textContent = `${s.backends.up} / ${s.backends.total}`;
  const ul = $('listeners');
  ul.replaceChildren(
    ...s.listeners.map((l) => {
      const listening = l.addresses.length > 0;
      const li = el('li');
      li.append(
        el('span', listening ? '● listening' : '○ not listening', listening ? 'badge ok' : 'badge bad'),
        ` ${l.name} (${l.mode}) ${l.addresses.join(', ')}`,
      );
      return li;
    }),
  );
  const sel = $<HTMLSelectElement>('f-listener');
  const names = s.listeners.map((l) => l.name);
  const have = [...sel.options].map((o) => o.value).filter(Boolean);
  if (names.join() !== have.join()) {
    const keep = sel.value;
    sel.replaceChildren(new Option('any', ''), ...names.map((n) => new Option(n, n)));
    sel.value = names.includes(keep) ? keep : '';
  }
}

/** The last complete seconds (at most RATE_SECONDS), for the rate tiles. */
const RATE_SECONDS = 5;
const lastSeconds: Array<{ verdicts: Record<Verdict, number>; early: number }> = [];

function paintRates(): void {
  const n = lastSeconds.length;
  if (n === 0) return;
  const by = VERDICTS.map((v) => ({ v, rate: lastSeconds.reduce((x, s) => x + s.verdicts[v.id], 0) / n })).filter((x) => x.rate > 0);
  const total = by.reduce((x, y) => x + y.rate, 0);
  $('now-rate').textContent = total.toFixed(1);
  $('now-rate-by').textContent = by.map((x) => `${x.v.symbol} ${x.v.label} ${x.rate.toFixed(1)}`).join(' · ');
  const early = lastSeconds.reduce((x, s) => x + s.early, 0) / n;
  $('now-early').textContent = early.toFixed(1);
  $('now-early-share').textContent = total > 0 ? `${Math.round((100 * early) / total)}% of sessions` : '';
}

/** The whole hour once, then only the seconds after the last one seen. */
export async function pollHistory(charts: HistoryCharts): Promise<void> {
  const since = charts.lastT;
  const h = await get<History>(since ? `/v1/history?since=${since}` : '/v1/history');
  charts.append(h);
  for (let i = Math.max(0, h.t.length - RATE_SECONDS); i < h.t.length; i++) {
    lastSeconds.push({
      verdicts: Object.fromEntries(VERDICTS.map((v) => [v.id, h.verdicts[v.id][i] ?? 0])) as Record<Verdict, number>,
      early: h.earlyTalkers[i] ?? 0,
    });
  }
  lastSeconds.splice(0, Math.max(0, lastSeconds.length - RATE_SECONDS));
  paintRates();
}

export async function pollStatus(): Promise<void> {
  paintStatus(await get<Status>('/v1/status'));
}
