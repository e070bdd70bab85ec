// A recording SMTP backend for tests: answers each command line at once (so it takes pipelined groups), offers PIPELINING or not, and records every line it received.

import net from 'node:net';

export interface RecordedSession {
  readonly remoteAddress: string;
  /** Every line received, CRLF/LF kept, in order (message data included, with `data` set). */
  readonly lines: { readonly text: string; readonly data: boolean }[];
  messages: number;
  closed: boolean;
}

export interface RecordingSmtp {
  readonly port: number;
  readonly sessions: RecordedSession[];
  /** The command lines of every session (message data left out). */
  commands(s: RecordedSession): string[];
  close(): Promise<void>;
}

/** `pipelining`: whether the EHLO reply offers PIPELINING. */
export async function startRecordingSmtp(opts: { pipelining: boolean; name?: string }): Promise<RecordingSmtp> {
  const name = opts.name ?? 'recorder.test';
  const sessions: RecordedSession[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.setNoDelay(true);
    s.on('error', () => undefined);
    const rec: RecordedSession = { remoteAddress: s.remoteAddress ?? '', lines: [], messages: 0, closed: false };
    sessions.push(rec);
    s.on('close', () => {
      rec.closed = true;
      sockets.delete(s);
    });
    let buf = '';
    let inData = false;
    s.write(`220 ${name} ESMTP recorder\r\n`);
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl + 1);
        buf = buf.slice(nl + 1);
        rec.lines.push({ text: line, data: inData });
        if (inData) {
          if (line === '.\r\n' || line === '.\n') {
            inData = false;
            rec.messages++;
            s.write('250 2.0.0 Ok: queued\r\n');
          }
          continue;
        }
        const verb = (line.match(/^[A-Za-z]+/)?.[0] ?? '').toUpperCase();
        if (verb === 'EHLO') {
          const ext = ['SIZE 10240000', ...(opts.pipelining ? ['PIPELINING'] : []), 'ENHANCEDSTATUSCODES', '8BITMIME'];
          s.write(`250-${name}\r\n${ext.map((e, i) => `250${i === ext.length - 1 ? ' ' : '-'}${e}\r\n`).join('')}`);
        } else if (verb === 'HELO') s.write(`250 ${name}\r\n`);
        else if (verb === 'MAIL' || verb === 'RCPT' || verb === 'RSET' || verb === 'NOOP') s.write('250 2.1.0 Ok\r\n');
        else if (verb === 'DATA') {
          inData = true;
          s.write('354 End data with <CR><LF>.<CR><LF>\r\n');
        } else if (verb === 'QUIT') s.end('221 2.0.0 Bye\r\n');
        else s.write('502 5.5.2 Error: command not recognized\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    sessions,
    commands: (s) => s.lines.filter((l) => !l.data).map((l) => l.text),
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
