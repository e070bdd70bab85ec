// Config and health: the effective config (GET /v1/config, secrets redacted) and the doctor's findings run on demand (POST /v1/doctor).

import { call, get } from './api.js';
import { $, clearError, el, fillTable, showError } from './dom.js';

interface Finding {
  id: string;
  status: string;
  what: string;
  detail: string;
  fix?: string;
}

async function runDoctor(): Promise<void> {
  clearError('health-error');
  const btn = $<HTMLButtonElement>('doctor-run');
  btn.disabled = true;
  $('doctor-verdict').textContent = 'running the checks…';
  try {
    const r = await call<{ verdict: string; findings: Finding[] }>('POST', '/v1/doctor', {
      returnPath: $<HTMLInputElement>('doctor-return').checked,
    });
    $('doctor-verdict').textContent = r.verdict;
    const table = $('doctor');
    table.hidden = false;
    fillTable('doctor', r.findings, (f, tr) => {
      tr.dataset.status = f.status;
      const st = el('td');
      st.append(el('span', f.status === 'OK' ? '✓ OK' : f.status === 'WARN' ? '⚠ WARN' : '✗ FAIL', `badge d-${f.status}`));
      tr.append(
        st,
        el('td', f.id, 'mono'),
        el('td', f.what, 'text'),
        el('td', f.detail, 'text'),
        el('td', f.status === 'OK' ? '' : (f.fix ?? ''), 'mono text'),
      );
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

export function wireHealth(): void {
  $('doctor-run').addEventListener('click', () => void runDoctor());
  $('config-show').addEventListener('click', () => void showConfig().catch((err: unknown) => showError('health-error', err)));
}
