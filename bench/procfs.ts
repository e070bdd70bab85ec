// Benchmark measurements of a process from /proc (CPU time, RSS, open fds) and the small statistics the report needs.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

let clockTicks: number | undefined;

/** Clock ticks per second (CLK_TCK) for /proc/PID/stat times; 100 on every common Linux. */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/**
 * CPU time of the whole process (all its threads), in milliseconds. From the scheduler's
 * per-thread run time (/proc/PID/task/TID/schedstat, nanoseconds) where the kernel has it,
 * else utime + stime from /proc/PID/stat (10 ms ticks). Threads that exit between two reads
 * would drop out of the sum; the proxies measured keep theirs for their whole life.
 */
export function cpuMs(pid: number): number {
  try {
    let ns = 0;
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    }
    if (Number.isFinite(ns) && ns > 0) return ns / 1e6;
  } catch {
    // no schedstat: fall back to the tick counters
  }
  return statCpuMs(pid);
}

/**
 * CPU time of the process's main thread (its first task: for etd, the JavaScript thread that makes
 * every decision), in milliseconds, from its schedstat (nanoseconds); NaN when unreadable.
 */
export function mainThreadCpuMs(pid: number): number {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
  } catch {
    return Number.NaN;
  }
}

/** User and system (kernel) CPU time of the whole process from /proc/PID/stat, in milliseconds; 10 ms resolution. */
export function cpuSplitMs(pid: number): { user: number; system: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // comm (field 2) may contain spaces and parentheses: count fields after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  const tick = 1000 / ticksPerSecond();
  return { user: Number(rest[11]) * tick, system: Number(rest[12]) * tick };
}

/**
 * CPU time of this process's children that have exited and been reaped (cutime + cstime of
 * /proc/self/stat), in milliseconds: a finished smtp-source run's CPU. 10 ms resolution.
 */
export function reapedChildrenCpuMs(): number {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3; cutime and cstime are fields 16 and 17.
  return (Number(rest[13]) + Number(rest[14])) * (1000 / ticksPerSecond());
}

/** The machine's CPU time so far (/proc/stat, all CPUs), in milliseconds: busy (not idle or iowait) and total. */
export function machineCpuMs(): { busy: number; total: number } {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  // cpu user nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user)
  const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  const tick = 1000 / ticksPerSecond();
  return { busy: (total - idle) * tick, total: total * tick };
}

/** User + system CPU time of the whole process from /proc/PID/stat, in milliseconds; 10 ms resolution. */
export function statCpuMs(pid: number): number {
  const { user, system } = cpuSplitMs(pid);
  return user + system;
}

/** Resident set size in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status (is ${pid} a live process?)`);
  return Number(m[1]) * 1024;
}

/**
 * Open file descriptors of a process. Linux ≥ 6.2 reports the count as the size of
 * /proc/PID/fd (a few µs, so it can be polled every millisecond); older kernels need a readdir.
 */
export function fdCount(pid: number): number {
  const size = fs.statSync(`/proc/${pid}/fd`).size;
  return size > 0 ? size : fs.readdirSync(`/proc/${pid}/fd`).length;
}

export function alive(pid: number): boolean {
  return fs.existsSync(`/proc/${pid}/stat`);
}

export interface LinearFit {
  /** Change of y per unit of x. */
  slope: number;
  intercept: number;
  /** Coefficient of determination (1 = all points on the line). */
  r2: number;
}

/** Ordinary least squares y = slope·x + intercept. */
export function linearFit(xs: readonly number[], ys: readonly number[]): LinearFit {
  const n = xs.length;
  if (n < 2 || ys.length !== n) throw new Error(`linearFit needs ≥ 2 paired points, got ${n} and ${ys.length}`);
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxx = 0;
  let sxy = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    const dx = (xs[i] as number) - mx;
    const dy = (ys[i] as number) - my;
    sxx += dx * dx;
    sxy += dx * dy;
    syy += dy * dy;
  }
  const slope = sxx === 0 ? 0 : sxy / sxx;
  const r2 = sxx === 0 || syy === 0 ? 1 : (sxy * sxy) / (sxx * syy);
  return { slope, intercept: my - slope * mx, r2 };
}

export interface Distribution {
  n: number;
  min: number;
  median: number;
  p90: number;
  max: number;
  mean: number;
}

/** Quantile by linear interpolation on sorted values, q in [0, 1]. */
function quantile(sorted: readonly number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo] as number;
  const b = sorted[hi] as number;
  return a + (b - a) * (pos - lo);
}

export function distribution(values: readonly number[]): Distribution {
  if (values.length === 0) throw new Error('distribution of no samples');
  const s = [...values].sort((a, b) => a - b);
  return {
    n: s.length,
    min: s[0] as number,
    median: quantile(s, 0.5),
    p90: quantile(s, 0.9),
    max: s[s.length - 1] as number,
    mean: s.reduce((a, b) => a + b, 0) / s.length,
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
