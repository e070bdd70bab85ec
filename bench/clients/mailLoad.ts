// Benchmark child process (client namespace): one polite mail session from each source address, `parallel` at a time.
//
// Usage: node dist/bench/clients/mailLoad.js 'SPEC-JSON'
//   SPEC: { host, port, sources: [local addresses], parallel, timeoutMs }
//   Every source makes exactly one session (a first visit: no cache anywhere knows it yet).
// stdout: one JSON line { sessions, delivered, wallMs, errors: [first texts] }.

import { sendMail } from '../smtpPeers.js';

interface Spec {
  host: string;
  port: number;
  sources: string[];
  parallel: number;
  timeoutMs: number;
}

const spec = JSON.parse(process.argv[2] ?? '{}') as Spec;
let next = 0;
let delivered = 0;
const errors: string[] = [];
const t0 = performance.now();

async function worker(): Promise<void> {
  for (let i = next++; i < spec.sources.length; i = next++) {
    const source = spec.sources[i]!;
    const r = await sendMail({ host: spec.host, port: spec.port, localAddress: source, tag: `bench-${i}`, timeoutMs: spec.timeoutMs });
    if (r.delivered) delivered++;
    else if (errors.length < 10) errors.push(`${source}: ${r.ended} ${r.last}`);
  }
}

await Promise.all(Array.from({ length: spec.parallel }, () => worker()));
process.stdout.write(`${JSON.stringify({ sessions: spec.sources.length, delivered, wallMs: performance.now() - t0, errors })}\n`);
