// Load generators in the client namespace: held-connection clients, the greeting-latency client, and Postfix smtp-source.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { JsonEvent, JsonLineProcess } from '../lab/netns.js';
import { type BenchLab, exited, SMTP_SOURCE, stopChild } from './benchLab.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const HELD_CLIENT = path.join(HERE, 'clients', 'heldClient.js');
const BANNER_CLIENT = path.join(HERE, 'clients', 'bannerClient.js');

export interface HeldCounts {
  connected: number;
  failed: number;
  closedByPeer: number;
  gotData: number;
  errors: Record<string, number>;
}

/** One held-connection client process: asks it to open more, waits until they settled. */
export class HeldClient {
  private asked = 0;
  private constructor(readonly proc: JsonLineProcess) {}

  static async start(bl: BenchLab, host: string, port: number): Promise<HeldClient> {
    const proc = bl.lab.spawnJson(bl.lab.ns.client, process.execPath, [HELD_CLIENT, host, String(port)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    await proc.waitFor((e) => e.event === 'ready', 10_000);
    return new HeldClient(proc);
  }

  /** Asks for `k` more connections (returns at once). */
  open(k: number): void {
    if (k <= 0) return;
    this.asked += k;
    this.proc.child.stdin?.write(`${JSON.stringify({ open: k })}\n`);
  }

  /** Waits until every connection asked for so far connected or failed; the counts then. */
  async settled(timeoutMs: number): Promise<HeldCounts> {
    const want = this.asked;
    const e = await this.proc.waitFor(
      (ev: JsonEvent) => ev.event === 'opened' && Number(ev.connected) + Number(ev.failed) >= want,
      timeoutMs,
    );
    return e as unknown as HeldCounts;
  }

  stop(): Promise<void> {
    return this.proc.stop(3000);
  }
}

export interface BannerSpec {
  host: string;
  port: number;
  sources: readonly string[];
  rounds: number;
  parallel: boolean;
  timeoutMs: number;
  maxMs?: number;
}

/** Runs the greeting-latency client once; its samples (ms) and error texts. */
export async function runBannerClient(bl: BenchLab, spec: BannerSpec, timeoutMs: number): Promise<{ samples: number[]; errors: string[] }> {
  const proc = bl.lab.spawnJson(bl.lab.ns.client, process.execPath, [BANNER_CLIENT, JSON.stringify(spec)]);
  try {
    const e = await proc.waitFor((ev) => Array.isArray(ev.samples), timeoutMs);
    return { samples: e.samples as number[], errors: (e.errors as string[] | undefined) ?? [] };
  } finally {
    await proc.stop(1000);
  }
}

export interface SmtpSourceSpec {
  host: string;
  port: number;
  /** -s: parallel sessions. */
  parallel: number;
  /** -m: messages in total. */
  messages: number;
  /** -l: payload bytes per message. */
  size: number;
  /** -d: keep each connection for the next message (relay throughput without a window per message). */
  keepConnections: boolean;
}

export interface SmtpSourceResult {
  wallMs: number;
  exit: number | string;
  timedOut: boolean;
  /** stderr lines (warnings, errors), the first few. */
  problems: string[];
  problemCount: number;
}

/** Runs Postfix smtp-source in the client namespace; the wall time from spawn to exit. */
export async function runSmtpSource(bl: BenchLab, spec: SmtpSourceSpec, timeoutMs: number): Promise<SmtpSourceResult> {
  const args = [
    '-s',
    String(spec.parallel),
    '-m',
    String(spec.messages),
    '-l',
    String(spec.size),
    '-M',
    'client.bench.example',
    '-f',
    'sender@client.bench.example',
    '-t',
    'rcpt@sink.bench.example',
    ...(spec.keepConnections ? ['-d'] : []),
    `${spec.host}:${spec.port}`,
  ];
  const started = performance.now();
  const child = bl.lab.spawn(bl.lab.ns.client, SMTP_SOURCE, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const problems: string[] = [];
  let problemCount = 0;
  let partial = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    partial += chunk;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) {
      if (!l.trim()) continue;
      problemCount++;
      if (problems.length < 10) problems.push(l.trim());
    }
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void stopChild(child, 500);
  }, timeoutMs);
  const exit = await exited(child);
  clearTimeout(timer);
  return { wallMs: performance.now() - started, exit, timedOut, problems, problemCount };
}
