// Reads a YAML config, applies defaults, validates it once against the schema plus cross-field rules,
// resolves durations to milliseconds and deep-freezes the result. Every error names the key path.
// biome-ignore-all lint/style/noExcessiveLinesPerFile: one concern (read, default, cross-check and freeze the config); the cross-field rules are a flat list that reads best in one place

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { ValueErrorType } from '@sinclair/typebox/errors';
import { Value } from '@sinclair/typebox/value';
import YAML from 'yaml';
import { redisProblems } from '../cluster/options.js';
import { EtdError } from '../errors.js';
import { reputationProblems } from '../reputation/configCheck.js';
import { isLoopback } from '../util/address.js';
import { rawAtInUserinfo, redactUrl } from '../util/redact.js';
import { parseCidr } from './cidr.js';
import { formatDuration as formatDur, parseDuration } from './duration.js';
import { type Config, ConfigSchema, DEFAULT_USER, type RawConfig } from './schema.js';
import { fallbackMessage, knownKeys, pointerToPath, SHOW_MAX, showValue as show } from './schemaErrors.js';

/** The verbs of RFC 5321 and of the extensions clients use on port 25: never a "non-SMTP" command. */
const SMTP_COMMANDS = new Set([
  'HELO',
  'EHLO',
  'MAIL',
  'RCPT',
  'DATA',
  'BDAT',
  'RSET',
  'NOOP',
  'QUIT',
  'VRFY',
  'EXPN',
  'HELP',
  'STARTTLS',
  'AUTH',
  'ETRN',
  'TURN',
  'ATRN',
  'SEND',
  'SOML',
  'SAML',
  'XCLIENT',
  'XFORWARD',
]);

/** One problem in a config: where, what, and how to fix it. */
export interface ConfigProblem {
  readonly path: string;
  readonly message: string;
}

/** Whether two keys differ by at most one edit or a swap of neighbours (a likely typo). */
function similar(a: string, b: string): boolean {
  if (a === b) return false;
  if (Math.abs(a.length - b.length) > 1) return false;
  if (a.length === b.length) {
    const diff = [...a].map((c, i) => (c === b[i] ? -1 : i)).filter((i) => i >= 0);
    return (
      diff.length === 1 || (diff.length === 2 && diff[1] === diff[0]! + 1 && a[diff[0]!] === b[diff[1]!] && a[diff[1]!] === b[diff[0]!])
    );
  }
  const [long, short] = a.length > b.length ? [a, b] : [b, a];
  for (let i = 0; i < long.length; i++) if (long.slice(0, i) + long.slice(i + 1) === short) return true;
  return false;
}

/** Turns TypeBox's errors into operator-facing sentences, most specific first, one per path. */
function schemaProblems(raw: unknown): ConfigProblem[] {
  const seen = new Set<string>();
  const out: ConfigProblem[] = [];
  for (const e of Value.Errors(ConfigSchema, raw)) {
    const path = pointerToPath(e.path) || '(top level)';
    let message: string;
    const schema = e.schema as Record<string, unknown>;
    switch (e.type) {
      case ValueErrorType.ObjectAdditionalProperties: {
        const known = knownKeys(e);
        const key = path.split(/[.[]/).pop() ?? path;
        const close = known.find((k) => similar(k, key));
        message = `unknown key; ${close ? `did you mean "${close}"? ` : ''}remove it or use one of: ${known.join(', ')}`;
        break;
      }
      case ValueErrorType.StringPattern:
        if (schema.pattern && String(schema.pattern).includes('(ms|s|m|h|d)')) {
          message = `must be a duration such as 500ms, 6s, 2m, 1h or 1d (got ${show(e.value)})`;
        } else if (String(schema.pattern).startsWith('^5')) {
          message = `must be an SMTP reply starting with a 5xx code and a space, e.g. "554 5.5.1 Protocol error" (got ${show(e.value)})`;
        } else if (String(schema.pattern).startsWith('^4')) {
          message = `must be an SMTP reply starting with a 4xx code and a space, e.g. "421 4.3.2 Try again later" (got ${show(e.value)})`;
        } else {
          message = `${PATTERN_WORDS[String(schema.pattern)] ?? `does not match ${schema.pattern}`} (got ${show(e.value)})`;
        }
        break;
      case ValueErrorType.String:
        message = String(schema.pattern ?? '').includes('(ms|s|m|h|d)')
          ? `must be a duration such as 500ms, 6s, 2m, 1h or 1d (got ${show(e.value)}; add the unit)`
          : fallbackMessage(e);
        break;
      case ValueErrorType.Object:
        message = `must be a mapping of keys to values (got ${show(e.value)})`;
        break;
      default:
        message = fallbackMessage(e);
    }
    if (seen.has(path)) continue;
    seen.add(path);
    out.push({ path, message });
  }
  // A literal mismatch inside a union also reports each literal; the union line says it all.
  return out;
}

/** What each non-duration, non-reply pattern of the schema asks for, in words. */
const PATTERN_WORDS: Record<string, string> = {
  '^[A-Za-z0-9_.-]+$': 'may only contain letters, digits, "_", "." and "-"',
  '^[A-Za-z0-9.-]+$': 'must be a host name: letters, digits, "." and "-"',
  '^[A-Za-z][A-Za-z0-9_]{0,31}$': 'must start with a letter, then at most 31 letters, digits or "_"',
  '^[!-~]{1,64}$': 'must be 1 to 64 printable ASCII characters without spaces, e.g. "etd:"',
  '^220-[ -~]+$': 'must be the first line of a multi-line greeting: "220-" then printable ASCII, e.g. "220-mx.example.com ESMTP"',
};

function crossFieldProblems(raw: RawConfig): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const names = new Set<string>();
  const binds = new Set<string>();
  raw.listeners.forEach((l, i) => {
    if (names.has(l.name))
      out.push({ path: `listeners[${i}].name`, message: `"${l.name}" is used by two listeners; names must be unique` });
    names.add(l.name);
    if (!net.isIP(l.address))
      out.push({ path: `listeners[${i}].address`, message: `"${l.address}" is not an IPv4 or IPv6 address (use 0.0.0.0 or :: for all)` });
    const bind = `${l.address}:${l.port}`;
    if (l.port !== 0 && binds.has(bind)) out.push({ path: `listeners[${i}].port`, message: `${bind} is already used by another listener` });
    binds.add(bind);
    l.destinations.forEach((d, j) => {
      const c = parseCidr(d);
      if (typeof c === 'string') out.push({ path: `listeners[${i}].destinations[${j}]`, message: c });
    });
    if (l.mode === 'intercept' && l.port === 0) {
      out.push({ path: `listeners[${i}].port`, message: 'intercept mode needs the real destination port to intercept (e.g. 25), not 0' });
    }
    if (l.destinations.length && l.mode !== 'intercept') {
      out.push({ path: `listeners[${i}].destinations`, message: 'only applies to mode: intercept; remove it or set mode: intercept' });
    }
    if (l.mode !== 'plain' && raw.upstream.source !== 'clientip') {
      out.push({
        path: `listeners[${i}].mode`,
        message: `mode ${l.mode} is transparent and needs upstream.source: clientip (got ${raw.upstream.source}); set it, or use mode: plain`,
      });
    }
  });
  const servers = new Set<string>();
  raw.upstream.servers.forEach((s, i) => {
    if (servers.has(s.name))
      out.push({ path: `upstream.servers[${i}].name`, message: `"${s.name}" is used by two servers; names must be unique` });
    servers.add(s.name);
    if (!net.isIP(s.address))
      out.push({
        path: `upstream.servers[${i}].address`,
        message: `"${s.address}" is not an IPv4 or IPv6 address (host names are not resolved; write the address)`,
      });
  });
  const forward = raw.upstream.forward ?? (raw.listeners.some((l) => l.mode === 'intercept') ? 'original' : 'pool');
  if (forward === 'pool' && raw.upstream.servers.length === 0) {
    out.push({
      path: 'upstream.servers',
      message: 'is empty; list at least one server, e.g. - { name: smtp1, address: 10.0.2.10, port: 25 }',
    });
  }
  if (raw.upstream.source === 'clientip' && raw.listeners.every((l) => l.mode === 'plain')) {
    out.push({
      path: 'upstream.source',
      message: 'clientip needs a transparent listener (mode: vip or intercept); use source: self for plain listeners',
    });
  }
  if (forward === 'original' && !raw.listeners.every((l) => l.mode === 'intercept')) {
    out.push({ path: 'upstream.forward', message: 'original only works when every listener is mode: intercept; use forward: pool' });
  }
  for (const key of ['window'] as const) {
    const ms = parseDuration(raw.detection[key]);
    if (ms !== undefined && ms > 300_000)
      out.push({ path: `detection.${key}`, message: `${raw.detection[key]} is longer than 5m; clients give up long before that` });
  }
  const st = raw.detection.stress;
  const stress = stressOf(raw);
  if (stress.below >= stress.above) {
    out.push({
      path: 'detection.stress.below',
      message: `must be lower than detection.stress.above (${stress.below} ≥ ${stress.above}), or the window would flap`,
    });
  }
  const nw = parseDuration(raw.detection.window);
  if (st.window !== undefined && nw !== undefined && stress.windowMs > nw) {
    out.push({
      path: 'detection.stress.window',
      message: `${st.window} is longer than detection.window ${raw.detection.window}; under stress the window should shorten`,
    });
  }
  raw.detection.protocol.nonSmtpCommand.commands.forEach((c, i) => {
    // One of these as a "non-SMTP" word would turn every sender away.
    if (SMTP_COMMANDS.has(c.toUpperCase()))
      out.push({
        path: `detection.protocol.nonSmtpCommand.commands[${i}]`,
        message: `${c} is an SMTP command; list only words no SMTP client sends`,
      });
  });
  for (const list of ['allow', 'deny'] as const) {
    raw.access[list].forEach((c, j) => {
      const r = parseCidr(c);
      if (typeof r === 'string') out.push({ path: `access.${list}[${j}]`, message: r });
    });
  }
  const api = raw.api;
  if (api.token !== undefined && api.tokenFile !== undefined)
    out.push({ path: 'api.tokenFile', message: 'set either api.token or api.tokenFile, not both' });
  if (api.tokenFile !== undefined) {
    try {
      const t = fs.readFileSync(api.tokenFile, 'utf8').trim();
      if (t.length < 16)
        out.push({
          path: 'api.tokenFile',
          message: `${api.tokenFile} holds a token shorter than 16 characters; generate one with: openssl rand -hex 32`,
        });
    } catch (e) {
      out.push({ path: 'api.tokenFile', message: `cannot read ${api.tokenFile}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` });
    }
  }
  if (api.enabled && !api.address.startsWith('/')) {
    if (!net.isIP(api.address))
      out.push({ path: 'api.address', message: `"${api.address}" is not an IP address or a unix socket path (starting with /)` });
    else if (!isLoopback(api.address) && api.token === undefined && api.tokenFile === undefined) {
      out.push({
        path: 'api.token',
        message: `the API is bound to ${api.address}, which is not loopback: set api.token or api.tokenFile (e.g. openssl rand -hex 32), or bind it to 127.0.0.1`,
      });
    }
  }
  const h = raw.upstream.health;
  const hi = parseDuration(h.interval);
  const ht = parseDuration(h.timeout);
  if (hi !== undefined && hi < 100) out.push({ path: 'upstream.health.interval', message: 'must be at least 100ms' });
  if (hi !== undefined && ht !== undefined && ht > hi)
    out.push({ path: 'upstream.health.timeout', message: `${h.timeout} is longer than the interval ${h.interval}; make it shorter` });
  // These become Node timers, which cannot exceed 2^31-1 ms (about 24.8 days).
  const timers: Array<[string, string | undefined]> = [
    ['detection.stress.window', raw.detection.stress.window],
    ['upstream.connectTimeout', raw.upstream.connectTimeout],
    ['upstream.health.interval', raw.upstream.health.interval],
    ['upstream.health.timeout', raw.upstream.health.timeout],
    ['timeouts.client', raw.timeouts.client],
    ['timeouts.server', raw.timeouts.server],
    ['timeouts.shutdownGrace', raw.timeouts.shutdownGrace],
    ['netfilter.watch', raw.netfilter.watch],
  ];
  for (const [path, text] of timers) {
    const v = text === undefined ? undefined : parseDuration(text);
    if (v !== undefined && v > 2_147_483_647) out.push({ path, message: `${text} is too long for a timer; use at most 24d` });
  }
  const ct = parseDuration(raw.upstream.connectTimeout);
  if (ct === 0) out.push({ path: 'upstream.connectTimeout', message: 'must be more than 0' });
  const rate = raw.limits.rate;
  if (rate !== undefined && parseDuration(rate.interval) === 0)
    out.push({
      path: 'limits.rate.interval',
      message: `must be more than 0 (got ${rate.interval}); e.g. 1m, or remove limits.rate to turn it off`,
    });
  out.push(...reputationProblems(raw.reputation));
  if (raw.cluster !== undefined) {
    out.push(...redisProblems(raw.cluster.redis));
    // A raw "@" in the password is read differently by URL parsers and by people: refused, not guessed.
    [
      ['url', raw.cluster.redis.url] as const,
      ...(raw.cluster.redis.sentinels ?? []).map((s, i) => [`sentinels[${i}]`, s] as const),
    ].forEach(([key, u]) => {
      if (u !== undefined && rawAtInUserinfo(u)) {
        out.push({
          path: `cluster.redis.${key}`,
          message: `${redactUrl(u)}: the user or password holds a raw "@"; percent-encode it as %40 (x@y → x%40y)`,
        });
      }
    });
    const caFile = raw.cluster.redis.caFile;
    if (caFile !== undefined) {
      const tls = [raw.cluster.redis.url ?? '', ...(raw.cluster.redis.sentinels ?? [])].some((u) => u.startsWith('rediss://'));
      if (!tls)
        out.push({
          path: 'cluster.redis.caFile',
          message: 'a CA is only used over TLS: write rediss:// in url (or a sentinel), or remove caFile',
        });
      try {
        if (!fs.readFileSync(caFile, 'utf8').includes('-----BEGIN CERTIFICATE-----')) {
          out.push({
            path: 'cluster.redis.caFile',
            message: `${caFile} holds no PEM certificate ("-----BEGIN CERTIFICATE-----"); give the CA certificate that signed Redis' certificate`,
          });
        }
      } catch (e) {
        out.push({ path: 'cluster.redis.caFile', message: `cannot read ${caFile}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` });
      }
    }
    for (const [path, text, min] of [
      ['cluster.redis.connectTimeout', raw.cluster.redis.connectTimeout, 1],
      ['cluster.redis.commandTimeout', raw.cluster.redis.commandTimeout, 1],
      ['cluster.syncInterval', raw.cluster.syncInterval, 100],
    ] as const) {
      const v = parseDuration(text);
      if (v !== undefined && v < min) out.push({ path, message: `must be at least ${min}ms (got ${text})` });
      if (v !== undefined && v > 2_147_483_647) out.push({ path, message: `${text} is too long for a timer; use at most 24d` });
    }
  }
  return out;
}

/** Stress thresholds: postscreen's 90% / 70% of the held limit unless set; the stress window defaults to 2s. */
function stressOf(raw: RawConfig): { above: number; below: number; windowMs: number } {
  const st = raw.detection.stress;
  const above = st.above ?? Math.max(1, Math.floor(raw.limits.maxHeld * 0.9));
  const below = st.below ?? Math.min(Math.floor(raw.limits.maxHeld * 0.7), above - 1);
  const windowMs =
    st.window !== undefined ? (parseDuration(st.window) ?? 2000) : Math.min(2000, parseDuration(raw.detection.window) ?? 2000);
  return { above, below, windowMs };
}

/** The API token from api.token or api.tokenFile (read once, here, so the config stays a value). */
function resolveToken(raw: RawConfig): string | undefined {
  if (raw.api.token !== undefined) return raw.api.token;
  if (raw.api.tokenFile === undefined) return undefined;
  return fs.readFileSync(raw.api.tokenFile, 'utf8').trim();
}

/** `workers: auto`: the cores this process may run on (its affinity mask), at most 16. */
export function autoWorkers(): number {
  return Math.max(1, Math.min(16, os.availableParallelism()));
}

function resolve(raw: RawConfig): Config {
  const ms = (d: string) => parseDuration(d) as number;
  const forward = raw.upstream.forward ?? (raw.listeners.some((l) => l.mode === 'intercept') ? 'original' : 'pool');
  return {
    listeners: raw.listeners.map((l) => ({ ...l, destinations: [...l.destinations] })),
    workers: raw.workers === 'auto' ? autoWorkers() : raw.workers,
    workersSetting: raw.workers,
    user: raw.user ?? DEFAULT_USER,
    userExplicit: raw.user !== undefined,
    detection: {
      windowMs: ms(raw.detection.window),
      action: raw.detection.action,
      rejectReply: raw.detection.rejectReply,
      stripPipeconnect: raw.detection.stripPipeconnect,
      teaser: raw.detection.teaser,
      stress: stressOf(raw),
      protocol: {
        pipelining: { action: raw.detection.protocol.pipelining.action },
        nonSmtpCommand: {
          action: raw.detection.protocol.nonSmtpCommand.action,
          commands: [...raw.detection.protocol.nonSmtpCommand.commands],
        },
        bareNewline: { action: raw.detection.protocol.bareNewline.action },
      },
    },
    upstream: {
      source: raw.upstream.source,
      balance: raw.upstream.balance,
      forward,
      connectTimeoutMs: ms(raw.upstream.connectTimeout),
      retries: raw.upstream.retries,
      noServerReply: raw.upstream.noServerReply,
      servers: raw.upstream.servers.map((s) => ({ ...s })),
      passiveFall: raw.upstream.passiveFall,
      health: {
        enabled: raw.upstream.health.enabled,
        intervalMs: ms(raw.upstream.health.interval),
        rise: raw.upstream.health.rise,
        fall: raw.upstream.health.fall,
        timeoutMs: ms(raw.upstream.health.timeout),
        helo: raw.upstream.health.helo,
        command: raw.upstream.health.command,
      },
    },
    api: {
      enabled: raw.api.enabled,
      address: raw.api.address,
      port: raw.api.port,
      token: resolveToken(raw),
      allowedHosts: raw.api.allowedHosts,
      maxConnections: raw.api.maxConnections,
    },
    timeouts: { clientMs: ms(raw.timeouts.client), serverMs: ms(raw.timeouts.server), shutdownGraceMs: ms(raw.timeouts.shutdownGrace) },
    limits: {
      maxConnections: raw.limits.maxConnections,
      maxHeld: raw.limits.maxHeld,
      perClient: raw.limits.perClient,
      rate: raw.limits.rate === undefined ? undefined : { perClient: raw.limits.rate.perClient, intervalMs: ms(raw.limits.rate.interval) },
    },
    netfilter: {
      manage: raw.netfilter.manage,
      mark: raw.netfilter.mark,
      table: raw.netfilter.table,
      rulePriority: raw.netfilter.rulePriority,
      tproxyPort: raw.netfilter.tproxyPort,
      tableName: raw.netfilter.tableName,
      watchMs: ms(raw.netfilter.watch),
    },
    cache: { enabled: raw.cache.enabled, ttlMs: ms(raw.cache.ttl), denyTtlMs: ms(raw.cache.denyTtl), scope: raw.cache.scope },
    access: {
      allow: [...raw.access.allow],
      deny: [...raw.access.deny],
      denyAction: raw.access.denyAction,
      denyReply: raw.access.denyReply,
      maxEntries: raw.access.maxEntries,
    },
    reputation: {
      dnsbl: raw.reputation.dnsbl.map((d) => ({
        zone: d.zone.replace(/\.$/, '').toLowerCase(),
        weight: d.weight,
        match: d.match ? [...d.match] : undefined,
        name: d.name,
      })),
      threshold: raw.reputation.threshold,
      allowThreshold: raw.reputation.allowThreshold,
      action: raw.reputation.action,
      reply: raw.reputation.reply,
      timeoutMs: ms(raw.reputation.timeout),
      resolvers: [...raw.reputation.resolvers],
      minTtlMs: ms(raw.reputation.minTtl),
      maxTtlMs: ms(raw.reputation.maxTtl),
      maxInFlight: raw.reputation.maxInFlight,
    },
    state: { path: raw.state.path },
    cluster:
      raw.cluster === undefined
        ? undefined
        : {
            redis: {
              url: raw.cluster.redis.url,
              sentinels: raw.cluster.redis.sentinels === undefined ? undefined : [...raw.cluster.redis.sentinels],
              name: raw.cluster.redis.name,
              caFile: raw.cluster.redis.caFile,
              ca: raw.cluster.redis.caFile === undefined ? undefined : fs.readFileSync(raw.cluster.redis.caFile, 'utf8'),
              keyPrefix: raw.cluster.redis.keyPrefix,
              connectTimeoutMs: ms(raw.cluster.redis.connectTimeout),
              commandTimeoutMs: ms(raw.cluster.redis.commandTimeout),
            },
            syncIntervalMs: ms(raw.cluster.syncInterval),
          },
    log: { level: raw.log.level },
  };
}

export function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
  }
  return value;
}

/** Problems listed in the message; the rest are counted (all of them stay on `err.problems`). */
const LIST_MAX = 25;

function invalid(source: string, problems: readonly ConfigProblem[]): EtdError {
  // Paths and messages can carry what the file holds (a key, an address): bounded like show().
  const cut = (text: string, max: number) => (text.length > max ? `${text.slice(0, max - 3)}...` : text);
  const shown = problems.slice(0, LIST_MAX).map((p) => `  ${cut(p.path, 2 * SHOW_MAX)}: ${cut(p.message, 6 * SHOW_MAX)}`);
  if (problems.length > LIST_MAX) shown.push(`  ... and ${problems.length - LIST_MAX} more`);
  const lines = shown.join('\n');
  const err = new EtdError('ETD_ERR_CONFIG_INVALID', `${source}: ${problems.length} problem${problems.length > 1 ? 's' : ''}:\n${lines}`);
  (err as EtdError & { problems: readonly ConfigProblem[] }).problems = problems;
  return err;
}

/** Validates an already-parsed document. Throws ETD_ERR_CONFIG_INVALID listing every problem. */
export function validateConfig(doc: unknown, source = 'config'): Config {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw invalid(source, [
      {
        path: '(top level)',
        message: `must be a mapping with at least "listeners" and "upstream" (got ${doc === null ? 'an empty file' : show(doc)})`,
      },
    ]);
  }
  const raw = Value.Default(ConfigSchema, structuredClone(doc)) as unknown;
  const problems = schemaProblems(raw);
  if (problems.length) throw invalid(source, problems);
  const cross = crossFieldProblems(raw as RawConfig);
  if (cross.length) throw invalid(source, cross);
  return deepFreeze(resolve(raw as RawConfig));
}

/**
 * YAML.parse with duplicate keys refused. The yaml package's own uniqueKeys check compares every
 * pair of keys in a mapping (20,000 keys took 7.5 s, blocking a SIGHUP reload); this is one Set
 * per mapping, with the same rule (equal scalar values of the same type are duplicates).
 */
function parseYaml(text: string): unknown {
  const lines = new YAML.LineCounter();
  const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: false, lineCounter: lines });
  for (const w of doc.warnings) process.emitWarning(w);
  if (doc.errors.length > 0) throw doc.errors[0];
  YAML.visit(doc, {
    Map(_, map) {
      const seen = new Set<string>();
      for (const pair of map.items) {
        if (!YAML.isScalar(pair.key)) continue;
        const id = `${typeof pair.key.value}:${String(pair.key.value)}`;
        if (seen.has(id)) {
          const at = lines.linePos(pair.key.range?.[0] ?? 0);
          throw new Error(
            `Map keys must be unique; "${String(pair.key.value).slice(0, 80)}" is repeated at line ${at.line}, column ${at.col}`,
          );
        }
        seen.add(id);
      }
    },
  });
  return doc.toJS();
}

/** Parses YAML text into a Config. */
export function parseConfig(text: string, source = 'config'): Config {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    throw new EtdError('ETD_ERR_CONFIG_PARSE', `${source}: not valid YAML: ${msg}`, {
      hint: 'fix the YAML syntax at the line shown (indentation, a missing colon, or a tab)',
    });
  }
  return validateConfig(doc ?? null, source);
}

/**
 * A config file is a few kilobytes; 1 MiB is far above any real one and keeps a mistaken or
 * hostile file (300k listeners took 30 s and 1.6 GB to validate) from blocking a reload.
 */
export const MAX_CONFIG_BYTES = 1024 * 1024;

/** Reads and validates a config file. Refuses a file over MAX_CONFIG_BYTES before parsing it. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      // Read at most one byte past the cap: the size from fstat may lie (a pipe, /proc, a growing file).
      const buf = Buffer.alloc(MAX_CONFIG_BYTES + 1);
      let n = 0;
      for (let got = -1; got !== 0 && n < buf.length; n += got) got = fs.readSync(fd, buf, n, buf.length - n, null);
      if (n > MAX_CONFIG_BYTES) {
        throw new EtdError(
          'ETD_ERR_CONFIG_READ',
          `config ${file} is larger than ${MAX_CONFIG_BYTES / 1024 / 1024} MiB; a config file is a few kilobytes`,
          {
            hint: 'pass the right file with -c; long lists of addresses belong in access lists loaded through the API, not in thousands of listeners or servers',
          },
        );
      }
      text = buf.subarray(0, n).toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    if (e instanceof EtdError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new EtdError('ETD_ERR_CONFIG_READ', `cannot read config ${file}: ${code ?? String(e)}`, {
      hint: code === 'ENOENT' ? 'pass the path of an existing file with -c (see config/etd.example.yaml)' : 'check the file permissions',
    });
  }
  return parseConfig(text, file);
}

/** The cluster section as written in YAML; the URL's password is redacted unless `redact` is false. */
function clusterDocument(c: NonNullable<Config['cluster']>, redact: boolean): unknown {
  const hide = (u: string) => (redact ? redactUrl(u) : u);
  const r = c.redis;
  return {
    redis: {
      ...(r.url !== undefined ? { url: hide(r.url) } : {}),
      ...(r.sentinels !== undefined ? { sentinels: r.sentinels.map(hide) } : {}),
      ...(r.name !== undefined ? { name: r.name } : {}),
      ...(r.caFile !== undefined ? { caFile: r.caFile } : {}),
      keyPrefix: r.keyPrefix,
      connectTimeout: formatDur(r.connectTimeoutMs),
      commandTimeout: formatDur(r.commandTimeoutMs),
    },
    syncInterval: formatDur(c.syncIntervalMs),
  };
}

/** The effective config as YAML, with durations written back as strings. */
export function configToYaml(config: Config, redact = true): string {
  return YAML.stringify(configToDocument(config, redact));
}

/** The config as a YAML-shaped document; secrets are redacted unless `redact` is false. */
export function configToDocument(config: Config, redact = true): unknown {
  const d = (n: number) => formatDur(n);
  return {
    listeners: config.listeners,
    workers: config.workersSetting,
    // Only when written: a default written back would turn into an explicit user (a missing default
    // user is a warning, a missing explicit one an error).
    ...(config.userExplicit ? { user: config.user } : {}),
    detection: {
      window: d(config.detection.windowMs),
      action: config.detection.action,
      rejectReply: config.detection.rejectReply,
      stripPipeconnect: config.detection.stripPipeconnect,
      ...(config.detection.teaser !== undefined ? { teaser: config.detection.teaser } : {}),
      stress: { above: config.detection.stress.above, below: config.detection.stress.below, window: d(config.detection.stress.windowMs) },
    },
    upstream: {
      source: config.upstream.source,
      balance: config.upstream.balance,
      forward: config.upstream.forward,
      connectTimeout: d(config.upstream.connectTimeoutMs),
      retries: config.upstream.retries,
      noServerReply: config.upstream.noServerReply,
      servers: config.upstream.servers,
      passiveFall: config.upstream.passiveFall,
      health: {
        enabled: config.upstream.health.enabled,
        interval: d(config.upstream.health.intervalMs),
        rise: config.upstream.health.rise,
        fall: config.upstream.health.fall,
        timeout: d(config.upstream.health.timeoutMs),
        helo: config.upstream.health.helo,
        command: config.upstream.health.command,
      },
    },
    api: {
      enabled: config.api.enabled,
      address: config.api.address,
      port: config.api.port,
      ...(config.api.token !== undefined ? { token: redact ? '<redacted>' : config.api.token } : {}),
      allowedHosts: config.api.allowedHosts ?? [],
      maxConnections: config.api.maxConnections ?? 64,
    },
    timeouts: {
      client: d(config.timeouts.clientMs),
      server: d(config.timeouts.serverMs),
      shutdownGrace: d(config.timeouts.shutdownGraceMs),
    },
    limits: {
      maxConnections: config.limits.maxConnections,
      maxHeld: config.limits.maxHeld,
      perClient: config.limits.perClient,
      ...(config.limits.rate ? { rate: { perClient: config.limits.rate.perClient, interval: d(config.limits.rate.intervalMs) } } : {}),
    },
    netfilter: {
      manage: config.netfilter.manage,
      mark: config.netfilter.mark,
      table: config.netfilter.table,
      rulePriority: config.netfilter.rulePriority,
      tproxyPort: config.netfilter.tproxyPort,
      tableName: config.netfilter.tableName,
      watch: d(config.netfilter.watchMs),
    },
    cache: { enabled: config.cache.enabled, ttl: d(config.cache.ttlMs), denyTtl: d(config.cache.denyTtlMs), scope: config.cache.scope },
    access: config.access,
    reputation: {
      dnsbl: config.reputation.dnsbl.map((d) => ({
        zone: d.zone,
        weight: d.weight,
        ...(d.match ? { match: d.match } : {}),
        ...(d.name !== undefined ? { name: d.name } : {}),
      })),
      threshold: config.reputation.threshold,
      allowThreshold: config.reputation.allowThreshold,
      action: config.reputation.action,
      reply: config.reputation.reply,
      timeout: d(config.reputation.timeoutMs),
      resolvers: config.reputation.resolvers,
      minTtl: d(config.reputation.minTtlMs),
      maxTtl: d(config.reputation.maxTtlMs),
      maxInFlight: config.reputation.maxInFlight,
    },
    state: config.state,
    ...(config.cluster !== undefined ? { cluster: clusterDocument(config.cluster, redact) } : {}),
    log: config.log,
  };
}
