// A real redis-server for the tests and benches (Debian's redis-server), on loopback or in a lab namespace: no persistence, foreground, ended by its PID.

import { type ChildProcess, spawn } from 'node:child_process';
import net from 'node:net';

export interface TestRedis {
  readonly host: string;
  readonly port: number;
  readonly child: ChildProcess;
  readonly url: string;
  /** Ends this redis-server by its PID (SIGKILL: a crash; SIGTERM: a clean stop) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (bound and released; fine for a test that starts its server at once). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts `redis-server --port PORT --bind HOST --save '' --appendonly no --daemonize no`, through
 * `spawner` when given (e.g. a lab namespace's spawn), and resolves once it accepts connections.
 */
export async function startRedis(
  host: string,
  port: number,
  spawner: (cmd: string, args: string[]) => ChildProcess = (cmd, args) => spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }),
  timeoutMs = 10_000,
): Promise<TestRedis> {
  const args = [
    '--port',
    String(port),
    '--bind',
    host,
    '--save',
    '',
    '--appendonly',
    'no',
    '--daemonize',
    'no',
    '--protected-mode',
    'no',
    '--loglevel',
    'notice',
    '--enable-debug-command',
    'local',
  ];
  const child = spawner('redis-server', args);
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server on ${host}:${port} not ready after ${timeoutMs} ms: ${out}`)), timeoutMs);
    const seen = (c: Buffer) => {
      out += c.toString();
      if (out.includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on('data', seen);
    child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited (${code}) before it was ready: ${out}`));
    });
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    host,
    port,
    child,
    url: `redis://${host.includes(':') ? `[${host}]` : host}:${port}`,
    async kill(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      if (child.pid !== undefined) process.kill(child.pid, signal);
      await exited;
    },
  };
}
