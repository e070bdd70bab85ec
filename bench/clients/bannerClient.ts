// Benchmark child process (client namespace): measures the time from connect() to the SMTP greeting, per connection.
//
// Usage: node dist/bench/clients/bannerClient.js 'SPEC-JSON'
//   SPEC: { host, port, sources: [local addresses], rounds, parallel, timeoutMs, maxMs? }
//   Each round visits every source address once: one after the other, or all at once (parallel).
//   A visit: connect from the source address, wait for the final greeting line ("220 …\r\n"),
//   note the time since connect() was called, send QUIT, wait for the server to close.
//   Stops early after maxMs in total (a time budget for slow, windowed visits).
// stdout: one JSON line { samples: [ms...], errors: [text...] }.

import net from 'node:net';

interface Spec {
  host: string;
  port: number;
  sources: string[];
  rounds: number;
  parallel: boolean;
  timeoutMs: number;
  maxMs?: number;
}

const spec = JSON.parse(process.argv[2] ?? '{}') as Spec;

/** One visit: resolves with the connect-to-greeting time in ms, or an error text. */
function visit(source: string): Promise<number | string> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const s = net.connect({ host: spec.host, port: spec.port, localAddress: source, noDelay: true });
    let buf = '';
    let greetedMs: number | undefined;
    let settled = false;
    const settle = (r: number | string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(
      () => settle(greetedMs ?? `timeout after ${spec.timeoutMs} ms (got ${JSON.stringify(buf.slice(0, 60))})`),
      spec.timeoutMs,
    );
    s.setEncoding('latin1');
    s.on('data', (chunk: string) => {
      if (greetedMs !== undefined) return;
      buf += chunk;
      // The greeting is complete at the line that starts "220 " (a multi-line one has "220-" before).
      const lines = buf.split('\r\n');
      for (const line of lines.slice(0, -1)) {
        if (line.startsWith('220 ')) {
          greetedMs = performance.now() - t0;
          s.write('QUIT\r\n');
          return;
        }
        if (!line.startsWith('220-')) {
          settle(`unexpected greeting ${JSON.stringify(line.slice(0, 60))}`);
          return;
        }
      }
    });
    s.on('error', (e: NodeJS.ErrnoException) => settle(greetedMs ?? `error ${e.code ?? e.message}`));
    s.on('close', () => settle(greetedMs ?? `closed before the greeting (got ${JSON.stringify(buf.slice(0, 60))})`));
  });
}

async function main(): Promise<void> {
  const samples: number[] = [];
  const errors: string[] = [];
  const started = performance.now();
  const note = (r: number | string): void => {
    if (typeof r === 'number') samples.push(r);
    else if (errors.length < 20) errors.push(r);
  };
  outer: for (let round = 0; round < spec.rounds; round++) {
    if (spec.parallel) {
      for (const r of await Promise.all(spec.sources.map(visit))) note(r);
    } else {
      for (const source of spec.sources) {
        note(await visit(source));
        if (spec.maxMs !== undefined && performance.now() - started > spec.maxMs) break outer;
      }
    }
    if (spec.maxMs !== undefined && performance.now() - started > spec.maxMs) break;
  }
  process.stdout.write(`${JSON.stringify({ samples, errors })}\n`);
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bannerClient: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
