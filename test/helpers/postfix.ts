// An isolated Postfix instance for tests (its own config dir, queue and maillog; the host's Postfix is never touched): what it needs, running its tools, free ports, stopping it and whatever it left.

import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { sleep } from './wait.js';

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
