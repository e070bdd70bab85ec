// `etd status`: asks the running etd's management API (TCP or unix socket) and prints a readable summary, or the raw JSON with --json.

import fs from 'node:fs';
import http from 'node:http';
import type { BackendBody } from '../api/routes/backends.js';
import type { StatsBody } from '../api/routes/stats.js';
import type { StatusBody, WorkerStatusBody } from '../api/routes/status.js';
import type { ApiConfig } from '../config/schema.js';
import { describeError } from '../errors.js';
import { urlHost } from '../util/address.js';
import { escapeText } from '../util/escapeBytes.js';

export interface StatusOptions {
  /** http://host:port of the API (ignored when `socket` is set). */
  readonly url?: string;
  /** Path of the API's unix socket. */
  readonly socket?: string;
  readonly token?: string;
  readonly json: boolean;
  readonly timeoutMs?: number;
}

/** Where `etd status` finds the API of an etd started with this config (wildcard binds are reached on loopback). */
export function apiTarget(api: ApiConfig): { url?: string; socket?: string; token?: string } {
  const token = api.token !== undefined ? { token: api.token } : {};
  if (api.address.startsWith('/')) return { socket: api.address, ...token };
  const host = api.address === '0.0.0.0' ? '127.0.0.1' : api.address === '::' ? '::1' : api.address;
  return { url: `http://${urlHost(host)}:${api.port}`, ...token };
}

/**
 * The bearer token for `etd status`: --token-file, else $ETD_TOKEN, else the config's. Never from
 * argv (ps shows it). An unreadable or empty file is an error naming it.
 */
export function statusToken(
  tokenFile: string | undefined,
  env: string | undefined,
  fromConfig: string | undefined,
): string | undefined | { error: string } {
  if (tokenFile !== undefined) {
    let text: string;
    try {
      text = fs.readFileSync(tokenFile, 'utf8').trim();
    } catch (e) {
      return { error: `cannot read the token file ${tokenFile}: ${(e as NodeJS.ErrnoException).code ?? describeError(e)}` };
    }
    return text === '' ? { error: `the token file ${tokenFile} is empty` } : text;
  }
  if (env !== undefined && env.trim() !== '') return env.trim();
  return fromConfig;
}

class StatusError extends Error {}

function where(opts: StatusOptions): string {
  return opts.socket !== undefined ? `unix socket ${opts.socket}` : (opts.url ?? 'http://127.0.0.1:8025');
}

/** GET one API path; resolves with the parsed JSON, or rejects with a sentence for the operator. */
function get(opts: StatusOptions, path: string): Promise<unknown> {
  const base = new URL(opts.url ?? 'http://127.0.0.1:8025');
  const target =
    opts.socket !== undefined
      ? { socketPath: opts.socket }
      : { host: base.hostname.replace(/^\[|\]$/g, ''), port: Number(base.port || 80) };
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        ...target,
        method: 'GET',
        path,
        headers: { accept: 'application/json', ...(opts.token !== undefined ? { authorization: `Bearer ${opts.token}` } : {}) },
        timeout: opts.timeoutMs ?? 5000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (e) => reject(new StatusError(`reading ${path} from ${where(opts)}: ${describeError(e)}`)));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown;
          try {
            body = JSON.parse(text);
          } catch {
            reject(
              new StatusError(
                `${where(opts)} answered ${path} with something that is not JSON (HTTP ${res.statusCode}); is that etd's API?`,
              ),
            );
            return;
          }
          if (res.statusCode === 401) {
            reject(
              new StatusError(
                `the API at ${where(opts)} wants a bearer token${opts.token !== undefined ? ' and refused the one given' : ''}: ` +
                  'pass -c with the config file that sets api.token (or api.tokenFile), --token-file FILE, or set ETD_TOKEN',
              ),
            );
          } else if (res.statusCode !== 200) {
            const msg = (body as { error?: unknown }).error;
            reject(
              new StatusError(`${where(opts)}: GET ${path}: HTTP ${res.statusCode}: ${typeof msg === 'string' ? msg : text.slice(0, 200)}`),
            );
          } else resolve(body);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${(opts.timeoutMs ?? 5000) / 1000} s`)));
    req.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        new StatusError(`cannot reach the etd API at ${where(opts)}: ${e.code ?? e.message} — is etd running? is api.address/port right?`),
      );
    });
    req.end();
  });
}

function duration(seconds: number): string {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

const num = (n: number) => n.toLocaleString('en-US');

/** One engine thread: its connections now, CPU time and share of a core, and its restarts if any. */
export function workerLine(w: WorkerStatusBody): string {
  const state = w.state === 'running' ? '' : ` ${w.state.toUpperCase()}`;
  const restarts = w.restarts > 0 ? `, restarted ${num(w.restarts)}×` : '';
  return (
    `${`#${w.index}`.padEnd(4)} ${num(w.sessions)} connections (${num(w.held)} held, ${num(w.relaying)} relaying), ` +
    `${num(w.accepted)} accepted, CPU ${num(w.cpuMs)} ms (${w.cpuPercent.toFixed(1)}%)${restarts}${state}`
  );
}

/** The readable summary: one screen, most important first. */
export function formatStatus(status: StatusBody, stats: StatsBody, backends: readonly BackendBody[]): string {
  const lines: string[] = [];
  lines.push(`etd ${status.version}, up ${duration(status.uptimeSeconds)} (since ${status.startedAt})`);
  lines.push(
    `connections  ${num(status.connections.held)} held, ${num(status.connections.relaying)} relaying, ${num(status.connections.total)} open`,
  );
  const st = status.stress;
  lines.push(
    st.active
      ? `stress       ON: window ${st.windowMs / 1000}s for new connections until fewer than ${num(st.leaveBelow)} are held`
      : `stress       off (window ${st.windowMs / 1000}s; stress above ${num(st.enterAbove)} held)`,
  );
  lines.push('listeners');
  for (const l of status.listeners) lines.push(`  ${l.name.padEnd(16)} ${l.mode.padEnd(9)} ${l.addresses.join(' ') || '(not listening)'}`);
  if (status.engine)
    lines.push(
      `engine       ${num(status.engine.connections)} connections, ${num(status.engine.fds)} fds, ${num(status.engine.bufferedBytes)} bytes buffered`,
    );
  // An older etd's answer has no workers: nothing to show.
  const workers = status.workers ?? [];
  if (workers.length > 0) {
    const lost =
      status.lostSessions > 0 || status.workerRestarts > 0
        ? `; ${num(status.workerRestarts)} restart${status.workerRestarts === 1 ? '' : 's'}, ${num(status.lostSessions)} connection${status.lostSessions === 1 ? '' : 's'} lost`
        : '';
    lines.push(`workers      ${workers.length}${lost}`);
    for (const w of workers) lines.push(`  ${workerLine(w)}`);
  }
  lines.push(`backends     ${status.backends.up} of ${status.backends.total} up`);
  const c = status.cluster;
  if (c) {
    const lag = c.lagMs === null ? '' : `, lag ${c.lagMs} ms`;
    lines.push(
      c.connected
        ? `cluster      up: ${c.where}${lag}, ${num(c.pendingWrites)} writes queued`
        : `cluster      ${c.state.toUpperCase()} since ${c.since}: ${c.where}; serving from local state, ${num(c.pendingWrites)} writes kept${c.lastError ? ` (${c.lastError})` : ''}`,
    );
  }
  for (const b of backends) {
    const why = b.state === 'down' ? `  (${b.lastReason})` : '';
    lines.push(`  ${b.name.padEnd(16)} ${b.state.padEnd(6)} ${`${b.address}:${b.port}`.padEnd(24)} ${num(b.active)} active${why}`);
  }
  const et = stats.earlyTalkers;
  lines.push('since start');
  lines.push(`  accepted       ${num(stats.accepted)}`);
  lines.push(`  passed         ${num(stats.passed)}  (relayed ${num(stats.relayed)})`);
  lines.push(`  early talkers  ${num(et.total)}  (drop ${num(et.drop)}, reject ${num(et.reject)}, log ${num(et.log)})`);
  lines.push(`  no server      ${num(stats.noServer)}`);
  const lim = stats.limits;
  lines.push(
    `  limit          ${num(stats.limitRejections)}  (max_connections ${num(lim.max_connections)}, max_held ${num(lim.max_held)}, per_client ${num(lim.per_client)}${lim.per_client_rate === undefined ? '' : `, per_client_rate ${num(lim.per_client_rate)}`})`,
  );
  lines.push(`  gone early     ${num(stats.clientGone)}`);
  // Verdicts without a line of their own above (newer ones included).
  const shown = new Set(['passed', 'early_talker', 'no_server', 'limit', 'client_gone']);
  for (const [verdict, n] of Object.entries(stats.verdicts)) {
    if (!shown.has(verdict) && n > 0) lines.push(`  ${verdict.replace(/_/g, ' ').padEnd(14)} ${num(n)}`);
  }
  lines.push(`  bytes          ${bytes(stats.bytes.fromClient)} from clients, ${bytes(stats.bytes.toClient)} to clients`);
  // Names, addresses and errors come from the API, which got them from Redis, backends and
  // config: no line may carry a control character to the terminal.
  return lines.map((l) => escapeText(l)).join('\n');
}

/** Returns the exit code: 0, or 1 when the API cannot be reached or answers with an error. */
export async function statusCommand(
  opts: StatusOptions,
  out: (s: string) => void,
  err: (s: string) => void = (s) => void process.stderr.write(`${s}\n`),
): Promise<number> {
  try {
    const [status, stats, backends] = await Promise.all([get(opts, '/v1/status'), get(opts, '/v1/stats'), get(opts, '/v1/backends')]);
    if (opts.json) {
      // JSON escapes C0 already; C1 (U+0080-U+009F, CSI and OSC among them) too, for a terminal that shows it.
      out(
        JSON.stringify({ status, stats, backends: (backends as { backends: unknown }).backends }, null, 2).replace(
          /[\x7f-\x9f]/g,
          (c) => `\\u00${c.charCodeAt(0).toString(16)}`,
        ),
      );
    } else {
      out(formatStatus(status as StatusBody, stats as StatsBody, (backends as { backends: BackendBody[] }).backends));
    }
    return 0;
  } catch (e) {
    err(escapeText(`etd status: ${e instanceof StatusError ? e.message : describeError(e)}`));
    return 1;
  }
}
