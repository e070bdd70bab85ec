// The verdict stream's table: recent lines, then the live stream, painted in batches from the feed; filters, pause, the whole line on a click.

import { type AuthError, get } from './api.js';
import { $, el, ms, setConn, verdictBadge } from './dom.js';
import { VerdictFeed, type VerdictRecord } from './feed.js';
import { openStream, type StreamHandle } from './stream.js';
import { VERDICTS } from './verdicts.js';

const feed = new VerdictFeed(200, 2000);

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
  // A protocol test's offending line shares the column (the cause names the test).
  td(r.earlyBytes ?? r.protocolBytes ?? '', 'opt mono clip');
  td(r.server ?? '', 'opt');
  td(ms(r.durationMs), 'opt');
  td(r.listener, 'opt');
  return tr;
}

/** The recently painted records by seq, so a click can show the whole line. */
const shown = new Map<string, VerdictRecord>();

export function paintStream(): void {
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

/** Fills the table with the recent lines, then follows the stream from there. */
export async function startStream(onAuth: (e: AuthError) => void): Promise<StreamHandle> {
  const recentEvents = await get<{ lastSeq: number; events: VerdictRecord[] }>('/v1/events?limit=200');
  for (const e of recentEvents.events) feed.push(e);
  return openStream(
    recentEvents.lastSeq,
    (r) => feed.push(r),
    (s, detail) => {
      if (s === 'live') setConn('● live', 'ok');
      else if (s === 'retrying') setConn(`reconnecting (${detail ?? ''})`, 'warn');
      else if (s === 'connecting') setConn('connecting…', 'warn');
    },
    onAuth,
  );
}

/** Filters, pause, and the whole line on a click (or Enter) on a row. */
export function wireStream(): void {
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
}
