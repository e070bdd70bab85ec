// An isolated Postfix instance for tests (its own config dir, queue and maillog; the host's Postfix is never touched): what it needs, running its tools, free ports, stopping it and whatever it left.

import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { sleep, waitFor } from './wait.js';

export const POSTFIX = '/usr/sbin/postfix';
export const MASTER = '/usr/lib/postfix/sbin/master';
export const SWAKS = '/usr/bin/swaks';

/** Why a Postfix test cannot run here, or undefined. */
export function postfixMissing(): string | undefined {
  const absent = [POSTFIX, MASTER, SWAKS].filter((f) => !fs.existsSync(f));
  if (absent.length) return `not installed: ${absent.join(', ')} (apt-get install postfix swaks)`;
  if (process.getuid?.() !== 0) return 'Postfix must be started as root (its master process drops privileges itself)';
  try {
    execFileSync('id', ['-u', 'postfix'], { stdio: 'pipe' });
  } catch {
    return 'there is no "postfix" user (the Debian package creates it)';
  }
  return undefined;
}

/** Runs a tool to its end (killed after timeoutMs); `out` is stdout then stderr. */
export function run(
  file: string,
  args: string[],
  timeoutMs = 30_000,
): Promise<{ code: number; stdout: string; stderr: string; out: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr), out: `${stdout}${stderr}` });
    });
  });
}

/** A loopback TCP port free at the time of asking. */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Pids whose parent is `ppid` (from /proc). */
function children(ppid: number): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push(Number(d));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** `postfix stop` for the instance of `etc`; then whatever is left of it (its master `pid` and children) is killed by pid. */
export async function stopPostfix(etc: string, pid: number | undefined): Promise<void> {
  await run(POSTFIX, ['-c', etc, 'stop'], 20_000);
  if (pid === undefined) return;
  const left = [...children(pid), pid];
  const deadline = Date.now() + 5000;
  while (alive(pid) && Date.now() < deadline) await sleep(50);
  for (const p of [...children(pid), ...left]) if (alive(p)) process.kill(p, 'SIGKILL');
}

/** A running isolated Postfix instance (startPostfix). */
export interface PostfixInstance {
  readonly dir: string;
  /** Its maillog so far ('' before the first line). */
  log(): string;
  /** `postfix stop`, then whatever is left of it killed by pid; its directory removed. Idempotent. */
  stop(): Promise<void>;
}

/** The services every instance runs, beside the smtpd listeners a test gives (master.cf). */
const SERVICES = [
  'pickup    unix n - n 60 1 pickup',
  'cleanup   unix n - n - 0 cleanup',
  'qmgr      unix n - n 300 1 qmgr',
  'rewrite   unix - - n - - trivial-rewrite',
  'bounce    unix - - n - 0 bounce',
  'defer     unix - - n - 0 bounce',
  'trace     unix - - n - 0 bounce',
  'verify    unix - - n - 1 verify',
  'flush     unix n - n 1000? 0 flush',
  'proxymap  unix - - n - - proxymap',
  'showq     unix n - n - - showq',
  'error     unix - - n - - error',
  'retry     unix - - n - - error',
  'discard   unix - - n - - discard',
  'smtp      unix - - n - - smtp',
  'relay     unix - - n - - smtp',
  'anvil     unix - - n - 1 anvil',
  'scache    unix - - n - 1 scache',
  'postlog   unix-dgram n - n - 1 postlogd',
];

/**
 * Starts an isolated Postfix instance under a temp dir: its own config (main.cf: a loopback-only
 * IPv4 base plus `mainCf`; master.cf: `listeners` plus the usual services), queue, data directory
 * and maillog file (no syslog here). Resolves once `readyPort` greets. Must run as root
 * (postfixMissing); on failure the instance is stopped and the maillog is in the error.
 */
export async function startPostfix(opts: {
  readonly name: string;
  readonly hostname: string;
  readonly mainCf: readonly string[];
  readonly listeners: readonly string[];
  readonly readyPort: number;
}): Promise<PostfixInstance> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `etd-${opts.name}-`));
  // Postfix daemons run as the postfix user and open data_directory and maillog by absolute path.
  fs.chmodSync(dir, 0o755);
  const etc = path.join(dir, 'etc');
  const data = path.join(dir, 'data');
  const maillog = path.join(dir, 'maillog');
  for (const d of [etc, path.join(dir, 'spool'), data]) fs.mkdirSync(d);
  const uid = Number(execFileSync('id', ['-u', 'postfix'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postfix'], { encoding: 'utf8' }).trim());
  fs.chownSync(data, uid, gid);
  const base = [
    'compatibility_level = 3.6',
    `queue_directory = ${dir}/spool`,
    `data_directory = ${data}`,
    'command_directory = /usr/sbin',
    'daemon_directory = /usr/lib/postfix/sbin',
    'shlib_directory = /usr/lib/postfix',
    'meta_directory = /etc/postfix',
    'mail_owner = postfix',
    'setgid_group = postdrop',
    `myhostname = ${opts.hostname}`,
    'mydomain = localdomain',
    'inet_interfaces = loopback-only',
    'inet_protocols = ipv4',
    'mydestination =',
    'mynetworks = 127.0.0.0/8',
    'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination',
    'alias_maps =',
    'alias_database =',
    // No syslog in a container: Postfix 3.4+ logs to a file through its postlog service.
    `maillog_file = ${maillog}`,
    `maillog_file_prefixes = ${dir}`,
    'smtputf8_enable = no',
    'biff = no',
  ];
  fs.writeFileSync(path.join(etc, 'main.cf'), [...base, ...opts.mainCf, ''].join('\n'));
  fs.writeFileSync(path.join(etc, 'master.cf'), [...opts.listeners, ...SERVICES, ''].join('\n'));
  const log = () => (fs.existsSync(maillog) ? fs.readFileSync(maillog, 'utf8') : '');
  const masterPid = () => {
    try {
      const pid = Number(fs.readFileSync(path.join(dir, 'spool', 'pid', 'master.pid'), 'utf8').trim());
      return pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  };
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // The master ends its children; whatever is left of this instance is killed by pid.
    await stopPostfix(etc, masterPid());
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const started = await run(POSTFIX, ['-c', etc, 'start'], 30_000);
  try {
    // `postfix` writes to stderr only on a tty; its reasons are in the maillog.
    if (started.code !== 0) throw new Error(`postfix -c ${etc} start failed (exit ${started.code}):\n${started.out}${log()}`);
    await waitFor(() => greets(opts.readyPort), { what: 'Postfix to listen', timeout: 15_000, detail: log });
  } catch (e) {
    await stop();
    throw e;
  }
  return { dir, log, stop };
}

/** Whether an SMTP server on 127.0.0.1:`port` sends its greeting within 2 s (then QUIT). */
function greets(port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.once('data', () => {
      s.end('QUIT\r\n');
      resolve(true);
    });
    s.once('error', () => resolve(false));
    s.setTimeout(2000, () => {
      s.destroy();
      resolve(false);
    });
  });
}
