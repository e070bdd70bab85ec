// The dashboard page: asks for the token when the API wants one, then polls /v1/* and follows the verdict stream, painting in batches.

import 'uplot/dist/uPlot.min.css';
import '../style.css';
import { ApiFailure, AuthError, call, get, token, whenUnauthorized } from './api.js';
import { HistoryCharts, type History } from './charts.js';
import { VerdictFeed, type VerdictRecord } from './feed.js';
import { openStream, type StreamHandle } from './stream.js';
import { VERDICTS, verdictView } from './verdicts.js';
import type { Verdict } from '../../src/proxy/verdict.js';

// ---- small DOM helpers ------------------------------------------------------------------------

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el as T;
};

function el<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string, cls?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function showError(id: string, e: unknown): void {
  const p = $(id);
  if (e instanceof AuthError) return; // the prompt says it
  p.textContent = e instanceof Error ? e.message : String(e);
  p.hidden = false;
}

function clearError(id: string): void {
  $(id).hidden = true;
}

/** A verdict as symbol + words in a coloured badge: readable without colour. */
function verdictBadge(verdict: string): HTMLElement {
  const v = verdictView(verdict);
  const b = el('span', `${v.symbol} ${v.label}`, `badge v-${verdict}`);
  b.dataset.verdict = verdict;
  return b;
}

/** Replaces a table's rows: one per item, filled in by `render`. */
function fillTable<T>(tableId: string, items: readonly T[], render: (item: T, tr: HTMLTableRowElement) => void): void {
  $(tableId)
    .querySelector('tbody')!
    .replaceChildren(
      ...items.map((item) => {
        const tr = el('tr');
        render(item, tr);
        return tr;
      }),
    );
}

const ms = (x: number | undefined): string => (x === undefined ? '' : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x < 10 ? 2 : 0)} ms`);

// ---- API shapes (the parts the page reads) ----------------------------------------------------

interface Status {
  version: string;
  uptimeSeconds: number;
  listeners: Array<{ name: string; mode: string; state?: string; addresses: string[] }>;
  connections: { held: number; relaying: number; total: number };
  backends: { up: number; total: number };
  stress: { active: boolean; windowMs: number; enterAbove: number; leaveBelow: number; changes: number };
}
interface Check {
  ok: boolean;
  reason?: string;
  detail?: string;
  ms: number;
  at: string;
}
interface Backend {
  name: string;
  address: string;
  port: number;
  weight: number;
  backup: boolean;
  state: string;
  active: number;
  total: number;
  lastReason: string;
  check: { checked: boolean; last: Check | null; lastFailure: Check | null } | null;
}
interface AccessEntry {
  cidr: string;
  list: string;
  source: string;
}
interface Client {
  address: string;
  cacheKey: string;
  access: AccessEntry | null;
  cache: { key: string; kind: string; expires: string } | null;
  decision: string;
  reason: string;
}
interface Finding {
  id: string;
  status: string;
  what: string;
  detail: string;
  fix?: string;
}

// ---- state ------------------------------------------------------------------------------------

const feed = new VerdictFeed(200, 2000);
let stream: StreamHandle | undefined;
let charts: HistoryCharts | undefined;
const timers: number[] = [];
let running = false;

function setConn(text: string, kind: 'ok' | 'warn' | 'bad'): void {
  const c = $('conn');
  c.textContent = text;
  c.className = `pill ${kind}`;
}

// ---- Now ------------------------------------------------------------------------------------

function paintStatus(s: Status): void {
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
      li.append(el('span', listening ? '● listening' : '○ not listening', listening ? 'badge ok' : 'badge bad'), ` ${l.name} (${l.mode}) ${l.addresses.join(', ')}`);
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
async function pollHistory(): Promise<void> {
  const since = charts?.lastT;
  const h = await get<History>(since ? `/v1/history?since=${since}` : '/v1/history');
  charts?.append(h);
  for (let i = Math.max(0, h.t.length - RATE_SECONDS); i < h.t.length; i++) {
    lastSeconds.push({ verdicts: Object.fromEntries(VERDICTS.map((v) => [v.id, h.verdicts[v.id][i] ?? 0])) as Record<Verdict, number>, early: h.earlyTalkers[i] ?? 0 });
  }
  lastSeconds.splice(0, Math.max(0, lastSeconds.length - RATE_SECONDS));
  paintRates();
}

// ---- verdict stream -------------------------------------------------------------------------

function row(r: VerdictRecord): HTMLTableRowElement {
  const tr = el('tr');
  tr.dataset.seq = String(r.seq);
  tr.dataset.verdict = r.verdict;
  tr.tabIndex = 0;
  const td = (text: string, cls?: string) => tr.append(el('td', text, cls));
  td(new Date(r.at).toLocaleTimeString([], { hour12: false }));
  const v = el('td');
  v.append(verdictBadge(r.verdict));
  tr.append(v);
  td(r.client, 'mono');
  td(r.cause);
  // Optional columns: hidden on a phone (the row's dialog shows them).
  td(ms(r.talkedAfterMs), 'opt');
  td(r.earlyBytes ?? '', 'opt mono clip');
  td(r.server ?? '', 'opt');
  td(ms(r.durationMs), 'opt');
  td(r.listener, 'opt');
  return tr;
}

/** The recently painted records by seq, so a click can show the whole line. */
const shown = new Map<string, VerdictRecord>();

function paintStream(): void {
  const batch = feed.take();
  const body = $('stream').querySelector('tbody')!;
  if (batch.replace) {
    body.replaceChildren();
    shown.clear();
  }
  if (batch.rows.length > 0) {
    const frag = document.createDocumentFragment();
    for (let i = batch.rows.length - 1; i >= 0; i--) {
      const r = batch.rows[i]!;
      shown.set(String(r.seq), r);
      frag.append(row(r));
    }
    body.prepend(frag);
    while (body.rows.length > feed.tableRows) {
      const last = body.rows[body.rows.length - 1]!;
      shown.delete(last.dataset.seq ?? '');
      last.remove();
    }
  }
  const info = [`${feed.received} received`, `showing the latest ${body.rows.length} (at most ${feed.tableRows})`];
  if (feed.dropped > 0) info.push(`${feed.dropped} rows dropped unshown: they arrived faster than the table is redrawn`);
  if (feed.paused) info.push(`paused: ${feed.receivedWhilePaused} arrived since`);
  $('stream-info').textContent = info.join(' · ');
}

function applyFilter(): void {
  feed.setFilter({
    verdict: $<HTMLSelectElement>('f-verdict').value,
    client: $<HTMLInputElement>('f-client').value,
    listener: $<HTMLSelectElement>('f-listener').value,
  });
  paintStream();
}

async function startStream(): Promise<void> {
  const recentEvents = await get<{ lastSeq: number; events: VerdictRecord[] }>('/v1/events?limit=200');
  for (const e of recentEvents.events) feed.push(e);
  stream = openStream(
    recentEvents.lastSeq,
    (r) => feed.push(r),
    (s, detail) => {
      if (s === 'live') setConn('● live', 'ok');
      else if (s === 'retrying') setConn(`reconnecting (${detail ?? ''})`, 'warn');
      else if (s === 'connecting') setConn('connecting…', 'warn');
    },
    (e) => unauthorized(e),
  );
}

// ---- backends -------------------------------------------------------------------------------

const STATE_SYMBOL: Record<string, string> = { up: '● up', down: '✗ down', drain: '◐ drain', maint: '■ maint' };

function checkText(c: Check | null | undefined): string {
  if (!c) return '';
  const when = new Date(c.at).toLocaleTimeString([], { hour12: false });
  return c.ok ? `✓ ${ms(c.ms)}, ${when}` : `✗ ${c.reason ?? 'failed'}${c.detail ? `: ${c.detail}` : ''}, ${when}`;
}

async function pollBackends(): Promise<void> {
  const { backends } = await get<{ backends: Backend[] }>('/v1/backends');
  fillTable('backends', backends, (b, tr) => {
    tr.dataset.server = b.name;
    const st = el('td');
    const badge = el('span', STATE_SYMBOL[b.state] ?? b.state, `badge s-${b.state}`);
    badge.dataset.state = b.state;
    badge.title = b.lastReason;
    st.append(badge);
    tr.append(el('td', b.name + (b.backup ? ' (backup)' : '')), st, el('td', String(b.active)));
    const actions = el('td', undefined, 'actions');
    for (const [label, state] of [
      ['ready', 'up'],
      ['drain', 'drain'],
      ['maint', 'maint'],
    ] as const) {
      const btn = el('button', label);
      btn.type = 'button';
      btn.dataset.action = state;
      const current = state === 'up' ? b.state === 'up' || b.state === 'down' : b.state === state;
      btn.disabled = current;
      btn.setAttribute('aria-label', `${label} ${b.name}`);
      btn.addEventListener('click', () => {
        clearError('backends-error');
        call('PATCH', `/v1/backends/${encodeURIComponent(b.name)}`, { state, reason: 'from the dashboard' })
          .then(pollBackends)
          .catch((e: unknown) => showError('backends-error', e));
      });
      actions.append(btn);
    }
    tr.append(actions);
    // Optional columns: hidden on a phone.
    tr.append(
      el('td', b.check?.checked ? checkText(b.check.last) : 'not checked', 'opt'),
      el('td', checkText(b.check?.lastFailure), 'opt'),
      el('td', String(b.total), 'opt'),
      el('td', String(b.weight), 'opt'),
      el('td', `${b.address}:${b.port}`, 'opt mono'),
    );
  });
}

// ---- clients and access lists -----------------------------------------------------------------

async function lookup(address: string): Promise<void> {
  clearError('lookup-error');
  const c = await get<Client>(`/v1/clients/${encodeURIComponent(address)}`);
  $('lookup-result').hidden = false;
  $('lookup-decision').textContent = `${c.decision === 'deny' ? '⊘ refused at once' : c.decision === 'skip' ? '✓ skips the window' : '… waits the window'} — ${c.reason}`;
  $('lookup-access').textContent = c.access ? `${c.access.list} ${c.access.cidr} (${c.access.source})` : 'no match';
  $('lookup-cache').textContent = c.cache ? `${c.cache.kind} entry ${c.cache.key}, until ${new Date(c.cache.expires).toLocaleString()}` : `no entry (key ${c.cacheKey})`;
  const del = $<HTMLButtonElement>('lookup-delete');
  del.hidden = c.cache === null;
  del.dataset.key = c.cache?.key ?? '';
}

async function pollAccess(): Promise<void> {
  const { entries } = await get<{ entries: AccessEntry[] }>('/v1/access');
  fillTable('access', entries, (a, tr) => {
    tr.append(el('td', a.cidr, 'mono'), el('td', a.list === 'deny' ? '⊘ deny' : '✓ allow'), el('td', a.source));
    const td = el('td');
    if (a.source === 'runtime') {
      const b = el('button', 'Remove');
      b.type = 'button';
      b.setAttribute('aria-label', `remove ${a.cidr}`);
      b.addEventListener('click', () => {
        clearError('access-error');
        call('DELETE', `/v1/access/${encodeURIComponent(a.cidr)}`)
          .then(pollAccess)
          .catch((e: unknown) => showError('access-error', e));
      });
      td.append(b);
    } else td.textContent = 'edit the config file';
    tr.append(td);
  });
}

// ---- config and doctor ----------------------------------------------------------------------

async function runDoctor(): Promise<void> {
  clearError('health-error');
  const btn = $<HTMLButtonElement>('doctor-run');
  btn.disabled = true;
  $('doctor-verdict').textContent = 'running the checks…';
  try {
    const r = await get<{ verdict: string; findings: Finding[] }>(`/v1/doctor?returnPath=${$<HTMLInputElement>('doctor-return').checked}`);
    $('doctor-verdict').textContent = r.verdict;
    const table = $('doctor');
    table.hidden = false;
    fillTable('doctor', r.findings, (f, tr) => {
      tr.dataset.status = f.status;
      const st = el('td');
      st.append(el('span', f.status === 'OK' ? '✓ OK' : f.status === 'WARN' ? '⚠ WARN' : '✗ FAIL', `badge d-${f.status}`));
      tr.append(st, el('td', f.id, 'mono'), el('td', f.what), el('td', f.detail), el('td', f.status === 'OK' ? '' : (f.fix ?? ''), 'mono'));
    });
  } catch (e) {
    $('doctor-verdict').textContent = '';
    showError('health-error', e);
  } finally {
    btn.disabled = false;
  }
}

async function showConfig(): Promise<void> {
  clearError('health-error');
  const c = await get<unknown>('/v1/config');
  const pre = $('config');
  pre.textContent = JSON.stringify(c, null, 2);
  pre.hidden = false;
}

// ---- start, stop, token -----------------------------------------------------------------------

function every(msInterval: number, fn: () => Promise<void>): void {
  let busy = false;
  const tick = () => {
    if (busy || !running) return;
    busy = true;
    fn()
      .catch((e: unknown) => {
        if (!(e instanceof AuthError)) setConn(`API error: ${e instanceof Error ? e.message : String(e)}`, 'bad');
      })
      .finally(() => (busy = false));
  };
  tick();
  timers.push(window.setInterval(tick, msInterval));
}

function stop(): void {
  running = false;
  for (const t of timers.splice(0)) clearInterval(t);
  stream?.stop();
  stream = undefined;
}

/** A refused request: stop everything, show no data, ask for the token. */
function unauthorized(e: AuthError): void {
  stop();
  $('dash').hidden = true;
  // No data stays on the page without a valid token.
  for (const id of ['stream', 'backends', 'access', 'doctor']) $(id).querySelector('tbody')!.replaceChildren();
  $('config').textContent = '';
  $('login').hidden = false;
  $('logout').hidden = true;
  setConn('locked', 'bad');
  const err = $('login-error');
  if (e.hadToken) {
    token.clear();
    err.textContent = 'The API refused this token. Check api.token (or api.tokenFile) and try again.';
    err.hidden = false;
  } else err.hidden = true;
  $<HTMLInputElement>('token').focus();
}

async function start(): Promise<void> {
  const status = await get<Status>('/v1/status');
  $('login').hidden = true;
  $('dash').hidden = false;
  $('logout').hidden = token.get() === null;
  running = true;
  paintStatus(status);
  charts ??= new HistoryCharts($('chart-sessions'), $('chart-counts'), $('chart-latency'));
  await startStream();
  every(1000, async () => paintStatus(await get<Status>('/v1/status')));
  every(1000, pollHistory);
  every(2000, pollBackends);
  every(5000, pollAccess);
  timers.push(window.setInterval(paintStream, 250));
}

function wire(): void {
  const fv = $<HTMLSelectElement>('f-verdict');
  for (const v of VERDICTS) fv.append(new Option(`${v.symbol} ${v.label}`, v.id));
  for (const id of ['f-verdict', 'f-listener']) $(id).addEventListener('change', applyFilter);
  $('f-client').addEventListener('input', applyFilter);
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  $('pause').addEventListener('click', () => {
    feed.setPaused(!feed.paused);
    const b = $('pause');
    b.textContent = feed.paused ? 'Resume' : 'Pause';
    b.setAttribute('aria-pressed', String(feed.paused));
    paintStream();
  });
  const openLine = (target: EventTarget | null) => {
    const tr = (target as HTMLElement | null)?.closest('tr');
    const r = tr ? shown.get(tr.dataset.seq ?? '') : undefined;
    if (!r) return;
    $('line-json').textContent = JSON.stringify(r, null, 2);
    $<HTMLDialogElement>('line-dialog').showModal();
  };
  const body = $('stream').querySelector('tbody')!;
  body.addEventListener('click', (e) => openLine(e.target));
  body.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') openLine(e.target);
  });

  $('lookup').addEventListener('submit', (e) => {
    e.preventDefault();
    lookup($<HTMLInputElement>('lookup-address').value.trim()).catch((err: unknown) => {
      $('lookup-result').hidden = true;
      showError('lookup-error', err);
    });
  });
  $('lookup-delete').addEventListener('click', () => {
    const key = $('lookup-delete').dataset.key ?? '';
    call('DELETE', `/v1/cache/${encodeURIComponent(key)}`)
      .then(() => lookup($<HTMLInputElement>('lookup-address').value.trim()))
      .catch((err: unknown) => showError('lookup-error', err));
  });
  $('access-add').addEventListener('submit', (e) => {
    e.preventDefault();
    clearError('access-error');
    call('POST', '/v1/access', { cidr: $<HTMLInputElement>('access-cidr').value.trim(), list: $<HTMLSelectElement>('access-list').value })
      .then(() => {
        $<HTMLInputElement>('access-cidr').value = '';
        return pollAccess();
      })
      .catch((err: unknown) => showError('access-error', err));
  });
  $('doctor-run').addEventListener('click', () => void runDoctor());
  $('config-show').addEventListener('click', () => void showConfig().catch((err: unknown) => showError('health-error', err)));

  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $<HTMLInputElement>('token');
    token.set(input.value.trim());
    input.value = '';
    start().catch((err: unknown) => {
      if (!(err instanceof AuthError)) setConn(`API error: ${err instanceof Error ? err.message : String(err)}`, 'bad');
    });
  });
  $('logout').addEventListener('click', () => {
    token.clear();
    unauthorized(new AuthError(false));
  });
  whenUnauthorized(unauthorized);
}

wire();
start().catch((e: unknown) => {
  if (e instanceof ApiFailure || !(e instanceof AuthError)) setConn(`API error: ${e instanceof Error ? e.message : String(e)}`, 'bad');
});
