// Looks a user up in the system's user database (getent passwd: /etc/passwd and any NSS source).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import type { Account } from './plan.js';

/** One `name:x:uid:gid:gecos:home:shell` line as an Account, or undefined when it is not one. */
export function parsePasswdLine(line: string): Account | undefined {
  const f = line.trim().split(':');
  if (f.length < 7 || !/^\d+$/.test(f[2]!) || !/^\d+$/.test(f[3]!)) return undefined;
  return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]) };
}

/** The account of `name`, or undefined when there is none. Without getent, /etc/passwd alone is read. */
export function lookupUser(name: string): Account | undefined {
  const r = spawnSync('getent', ['passwd', name], { encoding: 'utf8' });
  if (!r.error) return r.status === 0 ? parsePasswdLine(r.stdout.split('\n')[0] ?? '') : undefined;
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  return line === undefined ? undefined : parsePasswdLine(line);
}
