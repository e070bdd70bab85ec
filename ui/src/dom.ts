// Small DOM helpers shared by the dashboard's sections: lookups, elements, inline errors, table fills, the connection pill.

import { AuthError } from './api.js';
import { verdictView } from './verdicts.js';

export const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el as T;
};

export function el<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string, cls?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

export function showError(id: string, e: unknown): void {
  const p = $(id);
  if (e instanceof AuthError) return; // the prompt says it
  p.textContent = e instanceof Error ? e.message : String(e);
  p.hidden = false;
}

export function clearError(id: string): void {
  $(id).hidden = true;
}

/** A verdict as symbol + words in a coloured badge: readable without colour. */
export function verdictBadge(verdict: string): HTMLElement {
  const v = verdictView(verdict);
  const b = el('span', `${v.symbol} ${v.label}`, `badge v-${verdict}`);
  b.dataset.verdict = verdict;
  return b;
}

/** Replaces a table's rows: one per item, filled in by `render`. */
export function fillTable<T>(tableId: string, items: readonly T[], render: (item: T, tr: HTMLTableRowElement) => void): void {
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

export const ms = (x: number | undefined): string =>
  x === undefined ? '' : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x < 10 ? 2 : 0)} ms`;

export function setConn(text: string, kind: 'ok' | 'warn' | 'bad'): void {
  const c = $('conn');
  c.textContent = text;
  c.className = `pill ${kind}`;
}

/** Clears the rows of these tables (no data stays on the page without a valid token). */
export function clearTables(...ids: string[]): void {
  for (const id of ids) $(id).querySelector('tbody')!.replaceChildren();
}
