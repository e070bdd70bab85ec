// The backends table: state, checks, sessions, weight, and the ready/drain/maint buttons (PATCH /v1/backends/{name}).

import { call, get } from './api.js';
import { clearError, el, fillTable, ms, showError } from './dom.js';

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

const STATE_SYMBOL: Record<string, string> = { up: '● up', down: '✗ down', drain: '◐ drain', maint: '■ maint' };

function checkText(c: Check | null | undefined): string {
  if (!c) return '';
  const when = new Date(c.at).toLocaleTimeString([], { hour12: false });
  return c.ok ? `✓ ${ms(c.ms)}, ${when}` : `✗ ${c.reason ?? 'failed'}${c.detail ? `: ${c.detail}` : ''}, ${when}`;
}

export async function pollBackends(): Promise<void> {
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
      el('td', b.check?.checked ? checkText(b.check.last) : 'not checked', 'opt text'),
      el('td', checkText(b.check?.lastFailure), 'opt text'),
      el('td', String(b.total), 'opt'),
      el('td', String(b.weight), 'opt'),
      el('td', `${b.address}:${b.port}`, 'opt mono'),
    );
  });
}
