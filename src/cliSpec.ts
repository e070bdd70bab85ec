// The one description of etd's command line (commands, options, their text), rendered to `etd --help`, the README's CLI table and the man page etd(8).
//
// Edit the command line here and nowhere else: src/cli.ts parses the options listed here, the
// package build (scripts/package.mjs) renders the man page with renderMan(), and a unit test
// checks that README.md's CLI block is exactly renderReadmeTable().

export interface CommandSpec {
  readonly name: string;
  /** Arguments after the command name, e.g. `-c FILE [--json]`. */
  readonly args: string;
  /** One line: what the command does (help text and README). */
  readonly summary: string;
  /** More about it (man page only), plain sentences. */
  readonly details?: string;
}

export interface OptionSpec {
  /** The parseArgs key. */
  readonly key: string;
  readonly long: string;
  readonly short?: string;
  /** Its value's placeholder; absent for a boolean flag. */
  readonly value?: string;
  readonly multiple?: boolean;
  readonly default?: string;
  readonly text: string;
}

export const DEFAULT_CONFIG = '/etc/etd/etd.yaml';

export const COMMANDS: readonly CommandSpec[] = [
  {
    name: 'run',
    args: '-c FILE',
    summary: 'start the proxy (foreground; SIGHUP reloads, SIGTERM stops)',
    details:
      'Applies the netfilter rules and policy routing the transparent modes need, runs the start preflight (a critical failure refuses to start), listens, and logs one JSON summary line per session on standard output. Under systemd it reports readiness with sd_notify. On SIGTERM it stops accepting, lets relayed sessions finish within timeouts.shutdownGrace, and removes its rules.',
  },
  {
    name: 'check',
    args: '-c FILE',
    summary: 'validate a config file and print the effective config',
    details:
      'Prints every problem of an invalid file with the key it concerns, and exits 1; prints the effective configuration (defaults filled in, secrets redacted) and exits 0 otherwise.',
  },
  {
    name: 'rules',
    args: 'show|apply|remove -c FILE',
    summary: "inspect or manage etd's nftables table and policy routing",
    details:
      'apply and remove are idempotent; remove is what the systemd unit runs after etd stops (ExecStopPost), so a crash never leaves port-25 traffic diverted.',
  },
  {
    name: 'doctor',
    args: '-c FILE [--json] [--client ADDRESS] [--probe ADDRESS[:PORT]]...',
    summary:
      "check capabilities, kernel support, rules, sysctls and each backend's return path; every finding with its fix (exit 1 on FAIL)",
    details:
      'The return-path test connects to each server from a spoofed client address, exactly as a relayed session does, and tells whether the replies come back through etd. When a server sits behind a router (not on a subnet of etd) the fix it names is a policy route on that router (Linux ip rule, FRRouting pbr-map, or an nftables mark), not a default route on the server. In intercept mode with forward: original the destinations are not in the config: name them with --probe.',
  },
  {
    name: 'status',
    args: '[-c FILE] [--json] [--url URL | --socket PATH] [--token-file FILE]',
    summary: 'summary of a running etd from its management API',
    details:
      'The bearer token comes from --token-file, else the ETD_TOKEN environment variable, else the config (api.token or api.tokenFile). There is no --token: a token on the command line shows in ps to every user of the machine.',
  },
  { name: 'version', args: '', summary: 'print the version' },
];

export const OPTIONS: readonly OptionSpec[] = [
  {
    key: 'config',
    long: 'config',
    short: 'c',
    value: 'FILE',
    default: DEFAULT_CONFIG,
    text: `configuration file (default ${DEFAULT_CONFIG})`,
  },
  { key: 'json', long: 'json', text: 'doctor, status: machine-readable output' },
  {
    key: 'client',
    long: 'client',
    value: 'ADDRESS',
    text: "doctor: the client address its return-path test spoofs (default: an unused address of the listener's network)",
  },
  {
    key: 'probe',
    long: 'probe',
    value: 'ADDRESS[:PORT]',
    multiple: true,
    text: 'doctor: also test the return path from this mail server (port 25 unless given; IPv6 as [ADDRESS]:PORT); repeatable. For intercept mode, whose destinations the config does not list',
  },
  { key: 'url', long: 'url', value: 'URL', text: 'status: the API base URL (default from the config, else http://127.0.0.1:8025)' },
  { key: 'socket', long: 'socket', value: 'PATH', text: "status: the API's unix socket" },
  {
    key: 'token-file',
    long: 'token-file',
    value: 'FILE',
    text: 'status: read the bearer token from FILE (else $ETD_TOKEN, else the config)',
  },
  { key: 'help', long: 'help', short: 'h', text: 'this text' },
];

/** The options in node:util parseArgs form. */
export function parseArgsOptions(): Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean; default?: string }> {
  const out: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean; default?: string }> = {};
  for (const o of OPTIONS) {
    out[o.key] = {
      type: o.value === undefined ? 'boolean' : 'string',
      ...(o.short === undefined ? {} : { short: o.short }),
      ...(o.multiple ? { multiple: true } : {}),
      ...(o.default === undefined ? {} : { default: o.default }),
    };
  }
  return out;
}

const optionLabel = (o: OptionSpec) => `${o.short ? `-${o.short}, ` : ''}--${o.long}${o.value ? ` ${o.value}` : ''}`;

/** Wraps `text` at `width` columns. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

/** Left column, then the text wrapped in the right column (on the next line when the left one is too wide). */
function twoColumns(left: string, text: string): string[] {
  const COL = 30;
  const body = wrap(text, 92 - COL);
  const pad = ' '.repeat(COL);
  const first = `  ${left}`;
  if (first.length < COL) return [`${first.padEnd(COL)}${body[0] ?? ''}`, ...body.slice(1).map((l) => pad + l)];
  return [first, ...body.map((l) => pad + l)];
}

/** `etd --help`. */
export function renderUsage(): string {
  const lines = ['usage: etd <command> [options]', '', 'commands:'];
  for (const c of COMMANDS) lines.push(...twoColumns(`${c.name}${c.args ? ` ${c.args}` : ''}`, c.summary));
  lines.push('', 'options:');
  for (const o of OPTIONS) lines.push(...twoColumns(optionLabel(o), o.text));
  lines.push('', 'man etd (the package) or README.md: every command in detail.');
  return `${lines.join('\n')}\n`;
}

const md = (s: string) => s.replace(/\|/g, '\\|');

/** The README's CLI table (between its `<!-- cli -->` markers). */
export function renderReadmeTable(): string {
  const rows = ['| command | what |', '|---|---|'];
  for (const c of COMMANDS) rows.push(`| \`etd ${md(`${c.name}${c.args ? ` ${c.args}` : ''}`)}\` | ${md(c.summary)} |`);
  rows.push('', '| option | what |', '|---|---|');
  for (const o of OPTIONS) rows.push(`| \`${md(optionLabel(o))}\` | ${md(o.text)} |`);
  return rows.join('\n');
}

/** Escapes text for roff: backslashes, leading dots/quotes, hyphens in option names. */
function roff(s: string): string {
  const t = s.replace(/\\/g, '\\e').replace(/-/g, '\\-');
  return /^[.']/.test(t) ? `\\&${t}` : t;
}

/** The man page etd(8) in roff (man macros). */
export function renderMan(version: string, date: string): string {
  const out: string[] = [
    `.TH ETD 8 "${date}" "etd ${roff(version)}" "System Administration"`,
    '.SH NAME',
    'etd \\- SMTP early\\-talker detection: a transparent proxy that drops clients who speak before the greeting',
    '.SH SYNOPSIS',
  ];
  for (const c of COMMANDS) out.push(`.B "etd ${c.name}"`, ...(c.args ? [roff(c.args)] : []), '.br');
  out.push(
    '.SH DESCRIPTION',
    roff(
      "etd holds every new port-25 connection silently for a few seconds. A client that sends anything before it has seen the server's greeting is a spam bot (RFC 5321 section 4.3.1): etd drops it and the mail server never sees it. A client that waits is connected to a backend SMTP server from the client's own IP address, and etd relays the session.",
    ),
    '.SH COMMANDS',
  );
  for (const c of COMMANDS) {
    out.push('.TP', `.B ${c.name}${c.args ? ` ${roff(c.args)}` : ''}`, `${roff(c.summary.charAt(0).toUpperCase() + c.summary.slice(1))}.`);
    if (c.details) out.push(roff(c.details));
  }
  out.push('.SH OPTIONS');
  for (const o of OPTIONS) out.push('.TP', `.B ${roff(optionLabel(o))}`, `${roff(o.text.charAt(0).toUpperCase() + o.text.slice(1))}.`);
  out.push(
    '.SH FILES',
    '.TP',
    `.I ${DEFAULT_CONFIG}`,
    'The configuration (a conffile: an upgrade never overwrites it).',
    '.TP',
    '.I /var/lib/etd/state.db',
    'Pass and deny caches, runtime access entries (SQLite).',
    '.TP',
    '.I /etc/sysctl.d/90\\-etd.conf',
    'Kernel settings for a transparent proxy (forwarding, loose rp_filter, src_valid_mark=0).',
    '.SH EXIT STATUS',
    '0 on success; 1 on an error or a doctor FAIL; 2 on a usage error.',
    '.SH SEE ALSO',
    '.BR nft (8),',
    '.BR ip\\-rule (8),',
    '.BR systemctl (1).',
    'The README, docs/routing.md (Linux and FRRouting policy routing) and docs/errors.md in',
    '.IR /usr/share/doc/etd .',
  );
  return `${out.join('\n')}\n`;
}
