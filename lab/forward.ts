// Reaches a TCP service inside a lab namespace (etd's API, its dashboard) from this namespace: a loopback port here, relayed over a unix socket to a small relay process inside the namespace.
//
// Unix sockets are named in the file system, which the namespaces share, so a relay started
// with `ip netns exec` can listen on one and connect onward to an address only that namespace
// reaches. The relay is a lab process (killed by pid when the lab is destroyed); close() ends
// the loopback listener and removes the socket's directory. Traffic stays on loopback and
// inside the lab's namespace.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { LabProcesses } from './netns.js';

/** Run inside the namespace: unix socket in, TCP to HOST:PORT out, one pair per connection. */
const RELAY = `
const net = require('net');
const [sock, host, port] = process.argv.slice(1);
const server = net.createServer((c) => {
  const u = net.connect({ host, port: Number(port) });
  c.pipe(u); u.pipe(c);
  c.on('error', () => u.destroy()); u.on('error', () => c.destroy());
  c.on('close', () => u.destroy()); u.on('close', () => c.destroy());
});
server.listen(sock, () => console.log(JSON.stringify({ event: 'ready' })));
server.on('error', (e) => { console.log(JSON.stringify({ event: 'error', message: e.message })); process.exit(1); });
`;

export interface Forward {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Forwards 127.0.0.1:`localPort` here (0 = any free port; when the asked one is taken, any
 * free one) to `host`:`port` as seen from inside namespace `ns`.
 */
export async function forwardIntoNamespace(lab: LabProcesses, ns: string, host: string, port: number, localPort = 0): Promise<Forward> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-fwd-'));
  const sock = path.join(dir, 'relay.sock');
  const relay = lab.spawnJson(ns, process.execPath, ['-e', RELAY, sock, host, String(port)]);
  try {
    await relay.waitFor((e) => e.event === 'ready', 10_000);
  } catch (e) {
    await relay.stop(500);
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const sockets = new Set<net.Socket>();
  const server = net.createServer((c) => {
    const u = net.connect(sock);
    sockets.add(c).add(u);
    c.pipe(u);
    u.pipe(c);
    const end = () => {
      c.destroy();
      u.destroy();
      sockets.delete(c);
      sockets.delete(u);
    };
    for (const s of [c, u]) {
      s.on('error', end);
      s.on('close', end);
    }
  });
  const listen = (p: number) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(p, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
  try {
    await listen(localPort).catch((e: NodeJS.ErrnoException) => {
      if (localPort !== 0 && e.code === 'EADDRINUSE') return listen(0);
      throw e;
    });
  } catch (e) {
    await relay.stop(500);
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const bound = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${bound}`,
    port: bound,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await relay.stop(1000);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
