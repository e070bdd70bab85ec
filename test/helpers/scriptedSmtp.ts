// Scripted TCP "SMTP servers" on loopback for health-check tests: healthy, 421 banner, garbage, silent, flapping; killable.

import net from 'node:net';

/**
 * healthy — 220 banner, 250 to HELO/EHLO (multi-line for EHLO), 221 to QUIT, 250 to anything else;
 * split — healthy, but every reply is multi-line and written in 1–3 byte pieces;
 * banner421 — `421 Try again later` then close; garbage — an SSH banner; silent — accepts, says nothing;
 * no250 — a 220 banner, then 550 to HELO/EHLO; hangup — accepts and closes at once.
 */
export type Behaviour = 'healthy' | 'split' | 'banner421' | 'garbage' | 'silent' | 'no250' | 'hangup';

export interface ConnectionRecord {
  readonly at: number;
  /** Lines the peer sent, CRLF stripped. */
  readonly lines: string[];
}

export interface ScriptedServer {
  readonly name: string;
  readonly port: number;
  readonly connections: ConnectionRecord[];
  /** Currently open connections. */
  readonly open: Set<net.Socket>;
  /** The behaviour for the next connections: fixed, or chosen by the 0-based connection index. */
  behaviour: Behaviour | ((index: number) => Behaviour);
  /** Closes the listener and destroys every open connection (a server dying). */
  kill(): Promise<void>;
}

const GARBAGE = 'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n';

async function writePieces(c: net.Socket, text: string): Promise<void> {
  for (let i = 0; i < text.length; ) {
    const n = 1 + (i % 3);
    if (c.destroyed) return;
    c.write(text.slice(i, i + n));
    i += n;
    await new Promise((r) => setTimeout(r, 1));
  }
}

export async function startScripted(name: string, behaviour: ScriptedServer['behaviour'] = 'healthy', port = 0): Promise<ScriptedServer> {
  const connections: ConnectionRecord[] = [];
  const open = new Set<net.Socket>();
  const server = net.createServer((c) => {
    const index = connections.length;
    const rec: ConnectionRecord = { at: performance.now(), lines: [] };
    connections.push(rec);
    open.add(c);
    c.on('close', () => open.delete(c));
    c.on('error', () => c.destroy());
    // A test client may hold a session; never let a forgotten one keep the test alive.
    c.setTimeout(20_000, () => c.destroy());
    const b = typeof self.behaviour === 'function' ? self.behaviour(index) : self.behaviour;
    const say = (text: string) => (b === 'split' ? writePieces(c, text) : void c.write(text));
    switch (b) {
      case 'banner421':
        c.end('421 Try again later\r\n');
        return;
      case 'garbage':
        c.end(GARBAGE);
        return;
      case 'hangup':
        c.destroy();
        return;
      case 'silent':
        c.on('data', () => undefined);
        return;
      default:
        break;
    }
    void say(b === 'split' ? `220-${name} ESMTP\r\n220-no UCE\r\n220 ${name} ready\r\n` : `220 ${name} ESMTP ready\r\n`);
    let buf = '';
    c.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).replace(/\r$/, '');
        buf = buf.slice(i + 1);
        rec.lines.push(line);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'QUIT') {
          c.end('221 2.0.0 Bye\r\n');
          return;
        }
        if (verb === 'HELO' || verb === 'EHLO') {
          if (b === 'no250') void say('550 5.7.1 Go away\r\n');
          else if (verb === 'EHLO' || b === 'split') void say(`250-${name}\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n`);
          else void say(`250 ${name}\r\n`);
        } else {
          void say('250 2.0.0 OK\r\n');
        }
      }
    });
  });
  const self: ScriptedServer = {
    name,
    port: 0,
    connections,
    open,
    behaviour,
    kill: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const c of open) c.destroy();
      }),
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return Object.assign(self, { port: (server.address() as net.AddressInfo).port });
}

/** A loopback port with nothing listening on it (connects are refused). */
export async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
