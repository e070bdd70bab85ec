// `etd doctor -c FILE [--json] [--client ADDRESS] [--probe ADDRESS[:PORT]]...` and the start preflight: gather facts, evaluate them, print them or refuse to start.

import type { Config } from '../config/schema.js';
import { criticalFailures, evaluate, type Finding, summarize } from '../doctor/checks.js';
import { gatherFacts } from '../doctor/gather.js';
import { parseProbe } from '../doctor/targets.js';
import { EtdError } from '../errors.js';
import { escapeText } from '../util/escapeBytes.js';

export interface DoctorOptions {
  readonly json: boolean;
  /** Spoof this address in the return-path test (for its family). */
  readonly client?: string;
  /** The config file, for the fix commands (`etd rules apply -c FILE`). */
  readonly configFile?: string;
  /** `--probe` values: mail servers whose return path is tested too (parsed here; ETD_ERR_USAGE when malformed). */
  readonly probes?: readonly string[];
}

const PLACEHOLDER_FILE = 'FILE';

/** The findings as an aligned, readable table: status, id, what; then detail and fix indented below. */
export function formatFindings(findings: readonly Finding[]): string[] {
  const idWidth = Math.max(...findings.map((f) => f.id.length), 5);
  const pad = ' '.repeat(6 + idWidth + 2);
  const lines: string[] = [];
  for (const f of findings) {
    lines.push(`${f.status.padEnd(6)}${f.id.padEnd(idWidth)}  ${f.what}`);
    lines.push(`${pad}${f.detail}`);
    if (f.fix !== undefined && f.status !== 'OK') lines.push(`${pad}fix: ${f.fix}`);
  }
  // Details quote backends' greetings, Redis errors and DNS answers: nothing raw reaches the terminal.
  return lines.map((l) => escapeText(l));
}

/** One sentence on the findings as a whole: what etd run would do with them. */
export function verdictLine(findings: readonly Finding[]): string {
  const s = summarize(findings);
  const critical = criticalFailures(findings);
  const head = `${s.FAIL} FAIL, ${s.WARN} WARN, ${s.OK} OK`;
  if (critical.length) return `${head} — etd run would refuse to start (${critical.map((f) => f.id).join(', ')})`;
  const fails = findings.filter((f) => f.status === 'FAIL');
  if (s.FAIL && fails.every((f) => f.id === 'cluster.redis'))
    return `${head} — etd would start and serve from its local state, but would not share it with the other gateways`;
  if (s.FAIL) return `${head} — etd would start, but the FAILs above break transparent sessions`;
  return s.WARN ? `${head} — no failures; read the warnings` : `${head} — all checks passed`;
}

/** Runs every check (including the spoofed return-path test) and prints the findings. Exit code: 0 without FAIL, 1 with. */
export async function doctorCommand(config: Config, opts: DoctorOptions, out: (line: string) => void): Promise<number> {
  const configFile = opts.configFile ?? PLACEHOLDER_FILE;
  const probes = (opts.probes ?? []).map(parseProbe);
  const facts = await gatherFacts(config, {
    configFile,
    probes,
    returnPath: true,
    netfilter: true,
    redis: true,
    ...(opts.client === undefined ? {} : { client: opts.client }),
  });
  const findings = evaluate(facts);
  const s = summarize(findings);
  if (opts.json) {
    out(JSON.stringify({ ok: s.FAIL === 0, config: configFile, summary: s, findings }, null, 2));
  } else {
    out(`etd doctor — ${configFile}`);
    out('');
    for (const line of formatFindings(findings)) out(line);
    out('');
    out(escapeText(verdictLine(findings)));
  }
  return s.FAIL === 0 ? 0 : 1;
}

/** The part of a pino logger preflight uses. */
export interface PreflightLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/**
 * The critical checks at `etd run` start, after etd applied its netfilter rules: capabilities,
 * the native addon, kernel support, src_valid_mark and strict rp_filter on the interfaces etd's
 * traffic uses. Throws ETD_ERR_PREFLIGHT naming each critical failure and its fix; logs every
 * other non-OK finding as a warning. The rules are read back only when netfilter.manage is false
 * (otherwise etd just installed them). No test connect: backends may be down at start, and it
 * would slow the start. Takes a few tens of milliseconds (a handful of `ip` calls, one nft batch).
 */
export async function preflight(config: Config, log: PreflightLog, configFile = PLACEHOLDER_FILE): Promise<void> {
  const started = Date.now();
  const facts = await gatherFacts(config, { configFile, returnPath: false, netfilter: !config.netfilter.manage });
  const findings = evaluate(facts);
  const critical = criticalFailures(findings);
  for (const f of findings) {
    if (f.status === 'OK' || critical.includes(f)) continue;
    log.warn({ check: f.id, status: f.status, detail: f.detail, ...(f.fix === undefined ? {} : { fix: f.fix }) }, `preflight: ${f.what}`);
  }
  if (critical.length) {
    for (const f of critical)
      log.error({ check: f.id, detail: f.detail, ...(f.fix === undefined ? {} : { fix: f.fix }) }, `preflight FAIL: ${f.what}`);
    const what = critical.map((f) => `${f.id}: ${f.detail}`).join('; ');
    const fixes = critical.map((f) => (f.fix === undefined ? `${f.id}: see etd doctor` : `${f.id}: ${f.fix}`)).join('; ');
    throw new EtdError(
      'ETD_ERR_PREFLIGHT',
      `refusing to start: transparency cannot work (${critical.length} critical check${critical.length > 1 ? 's' : ''} failed): ${what}`,
      {
        hint: `fix: ${fixes} (etd doctor -c ${configFile} shows every check)`,
      },
    );
  }
  log.info(
    { checks: findings.length, warnings: findings.filter((f) => f.status !== 'OK').length, ms: Date.now() - started },
    'preflight passed',
  );
}
