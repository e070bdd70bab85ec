// Gate for privileged tests: they run as root; outside CI a non-root run skips them and says so,
// while in CI (CI=true) a test that cannot run fails loudly instead of skipping.

import { execFileSync } from 'node:child_process';

export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
export const inCI = process.env.CI === 'true' || process.env.CI === '1';

function netnsWorks(): boolean {
  if (!isRoot) return false;
  const name = `etdprobe${process.pid}`;
  try {
    execFileSync('ip', ['netns', 'add', name], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export const canNetns = netnsWorks();

/**
 * True when privileged tests should be skipped. Prints why. In CI it throws instead, so a
 * privileged suite can never be silently skipped there.
 */
export function skipPrivileged(suite: string): boolean {
  if (canNetns) return false;
  const why = isRoot ? 'network namespaces are unavailable (ip netns add failed)' : 'not running as root';
  if (inCI) throw new Error(`${suite}: cannot run in CI: ${why}. Privileged tests must run in CI.`);
  console.warn(`SKIPPED ${suite}: ${why} (these tests run as root; CI runs them)`);
  return true;
}

/** Like skipPrivileged for a test that needs root but no network namespace. */
export function skipUnlessRoot(what: string): boolean {
  if (isRoot) return false;
  if (inCI) throw new Error(`${what}: cannot run in CI: not running as root. Privileged tests must run in CI.`);
  console.warn(`SKIPPED ${what}: not running as root (CI runs it as root)`);
  return true;
}

export function hasTool(tool: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** True when `suite` must be skipped because `tool` (from Debian package `pkg`) is missing; throws in CI. */
export function skipWithout(tool: string, pkg: string, suite: string): boolean {
  if (hasTool(tool)) return false;
  const why = `${tool} is not installed (Debian: apt-get install ${pkg})`;
  if (inCI) throw new Error(`${suite}: cannot run in CI: ${why}. CI must install it.`);
  console.warn(`SKIPPED ${suite}: ${why}`);
  return true;
}
