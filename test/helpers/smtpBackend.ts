// A real SMTP backend for tests (the smtp-server package) that records each connection's peer and each message's checksum.

import crypto from 'node:crypto';
import type net from 'node:net';
import { SMTPServer } from 'smtp-server';

export interface BackendRecord {
  connections: Array<{ remoteAddress: string; remotePort: number }>;
  messages: Array<{ remoteAddress: string; size: number; sha256: string; from: string; to: string[] }>;
}

export interface TestBackend extends BackendRecord {
  readonly port: number;
  readonly banner: string;
  close(): Promise<void>;
}

export async function startBackend(opts: { name?: string; host?: string; ehloExtra?: string[] } = {}): Promise<TestBackend> {
  const name = opts.name ?? 'backend.test';
  const rec: BackendRecord = { connections: [], messages: [] };
  const server = new SMTPServer({
    name,
    banner: `ready ${name}`,
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    logger: false,
    size: 64 * 1024 * 1024,
    onConnect(session, cb) {
      rec.connections.push({ remoteAddress: session.remoteAddress.replace(/^::ffff:/, ''), remotePort: session.remotePort });
      cb();
    },
    onData(stream, session, cb) {
      const hash = crypto.createHash('sha256');
      let size = 0;
      stream.on('data', (c: Buffer) => {
        hash.update(c);
        size += c.length;
      });
      stream.on('end', () => {
        rec.messages.push({
          remoteAddress: session.remoteAddress.replace(/^::ffff:/, ''),
          size,
          sha256: hash.digest('hex'),
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
        });
        cb();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, opts.host ?? '127.0.0.1', () => resolve());
  });
  // Once listening, a socket error is a peer that went away mid-reply (EPIPE, ECONNRESET: etd closed
  // the session, as tests make it do); smtp-server re-emits it on the server, where unhandled it
  // would fail whichever test runs at that moment. Tests check connections and messages instead.
  server.on('error', () => undefined);
  const port = ((server as unknown as { server: net.Server }).server.address() as net.AddressInfo).port;
  return Object.assign(rec, {
    port,
    banner: `220 ${name} ESMTP ready ${name}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  });
}
