// The dashboard page: asks for the token when the API wants one, then runs the sections (polling /v1/*, following the verdict stream).

import 'uplot/dist/uPlot.min.css';
import '../style.css';
import { ApiFailure, AuthError, get, token, whenUnauthorized } from './api.js';
import { pollBackends } from './backends.js';
import { HistoryCharts } from './charts.js';
import { pollAccess, wireClients } from './clients.js';
import { $, clearTables, setConn } from './dom.js';
import { wireHealth } from './health.js';
import { paintStatus, pollHistory, pollStatus, type Status } from './now.js';
import type { StreamHandle } from './stream.js';
import { paintStream, startStream, wireStream } from './streamView.js';

let stream: StreamHandle | undefined;
let charts: HistoryCharts | undefined;
const timers: number[] = [];
let running = false;

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
  clearTables('stream', 'backends', 'access', 'doctor');
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
  const c = (charts ??= new HistoryCharts($('chart-sessions'), $('chart-counts'), $('chart-latency')));
  stream = await startStream(unauthorized);
  every(1000, pollStatus);
  every(1000, () => pollHistory(c));
  every(2000, pollBackends);
  every(5000, pollAccess);
  timers.push(window.setInterval(paintStream, 250));
}

function wire(): void {
  wireStream();
  wireClients();
  wireHealth();
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
