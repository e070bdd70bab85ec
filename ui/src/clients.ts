// Clients: an address looked up (GET /v1/clients/{address}), its cache entry deleted; the access lists listed, added to, removed from.

import { call, get } from './api.js';
import { $, clearError, el, fillTable, showError } from './dom.js';

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

interface Reputation {
  enabled: boolean;
  score: number;
  decision: string;
  lists: Array<{ name: string; status: string; answers: string[]; matched: boolean; refused: boolean }>;
}

/** The DNSBL line: the score, what it earns, and the lists that matched or refused the query. */
function reputationText(r: Reputation): string {
  if (!r.enabled) return 'no lists configured (reputation.dnsbl)';
  const earns = r.decision === 'refuse' ? '⊘ refused' : r.decision === 'allow' ? '✓ allowlisted, skips the window' : '… the window decides';
  const notes = r.lists.filter((l) => l.matched || l.refused || (l.status !== 'answer' && l.status !== 'none'));
  const detail = notes.map(
    (l) => `${l.name}: ${l.refused ? `${l.answers.join(', ')} (query refused, counts 0)` : l.matched ? l.answers.join(', ') : l.status}`,
  );
  return `score ${r.score} — ${earns}${detail.length ? ` — ${detail.join('; ')}` : ''}`;
}

async function lookup(address: string): Promise<void> {
  clearError('lookup-error');
  const [c, r] = await Promise.all([
    get<Client>(`/v1/clients/${encodeURIComponent(address)}`),
    get<Reputation>(`/v1/reputation/${encodeURIComponent(address)}`),
  ]);
  $('lookup-dnsbl').textContent = reputationText(r);
  $('lookup-result').hidden = false;
  $('lookup-decision').textContent =
    `${c.decision === 'deny' ? '⊘ refused at once' : c.decision === 'skip' ? '✓ skips the window' : '… waits the window'} — ${c.reason}`;
  $('lookup-access').textContent = c.access ? `${c.access.list} ${c.access.cidr} (${c.access.source})` : 'no match';
  $('lookup-cache').textContent = c.cache
    ? `${c.cache.kind} entry ${c.cache.key}, until ${new Date(c.cache.expires).toLocaleString()}`
    : `no entry (key ${c.cacheKey})`;
  const del = $<HTMLButtonElement>('lookup-delete');
  del.hidden = c.cache === null;
  del.dataset.key = c.cache?.key ?? '';
}

export async function pollAccess(): Promise<void> {
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

export function wireClients(): void {
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
}
