// execve(2) through koffi: replaces the running Node process (same PID) with another program.
//
// Node 20 has no process.execve. Node marks stdin, stdout and stderr close-on-exec at start (so
// that its own children get them only through spawn's dup2): they are made inheritable again
// first, or the new program would start without them. Every other descriptor Node and libuv open
// is close-on-exec already. All threads end with the exec; nothing of this process survives it.

import { createRequire } from 'node:module';
import { EtdError } from '../errors.js';

type Koffi = typeof import('koffi');

const F_SETFD = 2;

/** Never returns on success; throws ETD_ERR_PRIVILEGE_DROP with errno when execve fails. */
export function execve(file: string, argv: readonly string[], env: Readonly<Record<string, string | undefined>>): never {
  const koffi = createRequire(import.meta.url)('koffi') as Koffi;
  const libc = koffi.load('libc.so.6');
  const exec = libc.func('int execve(const char *path, const char **argv, const char **envp)') as (
    path: string,
    argv: Array<string | null>,
    envp: Array<string | null>,
  ) => number;
  const fcntl = libc.func('int fcntl(int fd, int cmd, ...)') as (fd: number, cmd: number, type: string, arg: number) => number;
  for (const fd of [0, 1, 2]) fcntl(fd, F_SETFD, 'int', 0);
  const envp = Object.entries(env)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  exec(file, [...argv, null], [...envp, null]);
  const errno = koffi.errno();
  throw new EtdError('ETD_ERR_PRIVILEGE_DROP', `execve(${file}) failed: errno ${errno}`, {
    hint: 'check that setpriv (util-linux) is installed and executable, or write user: root to keep root',
    errno,
    syscall: 'execve',
  });
}
