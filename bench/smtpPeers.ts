// Cheap SMTP peers for the soak driver and the reliability tests: a raw client that sends one tagged message, and a sink that counts messages by tag and can fail on cue.

import net from 'node:net';

/** What one client session ended with. */
export interface MailResult {
  /** True when the backend answered 250 to the end of DATA: the message is the backend's now. */
  readonly delivered: boolean;
  /** Every reply code seen, in order (the greeting's first). */
  readonly codes: readonly number[];
  /** The last reply's text, for failure messages. */
  readonly last: string;
  /** How the connection ended: after QUIT, by FIN or RST from the server, by the timeout, or a connect error code. */
  readonly ended: 'quit' | 'end' | 'reset' | 'timeout' | string;
  readonly ms: number;
}

export interface MailOptions {
  readonly port: number;
  readonly host?: string;
  /** Source address (any 127.x.y.z on loopback), to look like distinct clients. */
  readonly localAddress?: string;
  /** Written as the Message-ID; the sink counts messages by it. */
  readonly tag: string;
  /** The envelope sender (default soak@client.test); a unique one lets a recorder that logs senders count messages. */
  readonly from?: string;
  /** Body size in bytes (default ~200). */
  readonly bodyBytes?: number;
  /** Whole-session limit (default 15 s). */
  readonly timeoutMs?: number;
}

const STEPS = ['greeting', 'ehlo', 'mail', 'rcpt', 'data', 'body', 'quit'] as const;
const EXPECT: Record<(typeof STEPS)[number], number> = { greeting: 220, ehlo: 250, mail: 250, rcpt: 250, data: 354, body: 250, quit: 221 };

function body(tag: string, bytes: number): string {
  const head = `Message-ID: <${tag}>\r\nFrom: <soak@client.test>\r\nTo: <sink@backend.test>\r\nSubject: ${tag}\r\n\r\n`;
  const line = 'The quick brown fox jumps over the lazy dog 0123456789.\r\n';
  let text = head;
  while (text.length < bytes) text += line;
  return `${text}.\r\n`;
}

/**
 * One polite SMTP session: waits for the greeting (never talks first), EHLO, MAIL, RCPT, DATA, QUIT.
 * Replies may be multi-line and split anywhere; any unexpected code ends the session with QUIT.
 */
export function sendMail(o: MailOptions): Promise<MailResult> {
  const started = performance.now();
  return new Promise((resolve) => {
    const codes: number[] = [];
    let step = 0;
    let delivered = false;
    let buf = '';
    let last = '';
    let done = false;
    const s = net.connect({ port: o.port, host: o.host ?? '127.0.0.1', ...(o.localAddress ? { localAddress: o.localAddress } : {}) });
    const finish = (ended: MailResult['ended']): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ delivered, codes, last, ended, ms: Math.round(performance.now() - started) });
    };
    const timer = setTimeout(() => finish('timeout'), o.timeoutMs ?? 15_000);
    s.setNoDelay(true);
    s.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        // "250-..." continues a reply; "250 ..." (or a bare code) ends it.
        if (/^\d{3}-/.test(line)) continue;
        last = line;
        const code = Number(line.slice(0, 3));
        codes.push(code);
        const name = STEPS[step];
        if (name === undefined) continue;
        if (code !== EXPECT[name]) {
          if (name === 'quit') finish('quit');
          else {
            step = STEPS.indexOf('quit');
            s.write('QUIT\r\n');
          }
          continue;
        }
        if (name === 'body') delivered = true;
        step++;
        switch (STEPS[step]) {
          case 'ehlo':
            s.write('EHLO client.test\r\n');
            break;
          case 'mail':
            s.write(`MAIL FROM:<${o.from ?? 'soak@client.test'}>\r\n`);
            break;
          case 'rcpt':
            s.write('RCPT TO:<sink@backend.test>\r\n');
            break;
          case 'data':
            s.write('DATA\r\n');
            break;
          case 'body':
            s.write(body(o.tag, o.bodyBytes ?? 200));
            break;
          case 'quit':
            s.write('QUIT\r\n');
            break;
          default:
            finish('quit');
        }
      }
    });
    s.on('end', () => finish('end'));
    s.on('close', () => finish('end'));
    s.on('error', (e: NodeJS.ErrnoException) => finish(e.code === 'ECONNRESET' || e.code === 'EPIPE' ? 'reset' : (e.code ?? 'error')));
  });
}

/**
 * none: a working server; silent: accepts and never greets; rstAfter354: answers DATA with 354 then
 * resets; finMidData / rstMidData: closes (FIN, reading on) or resets (as a dying process does with
 * unread data) once some message bytes arrived.
 */
export type SinkFault = 'none' | 'silent' | 'rstAfter354' | 'finMidData' | 'rstMidData';

export interface Sink {
  readonly port: number;
  /** Message-IDs of messages answered with 250, in order. */
  readonly messages: string[];
  /** Connections accepted so far. */
  connections: number;
  readonly open: Set<net.Socket>;
  /** The behaviour of the next connections. */
  fault: SinkFault;
  /** Stops listening; open sessions go on (a backend restarting gracefully). `hard` also destroys them. */
  stopListening(hard?: boolean): Promise<void>;
  /** Listens again on the same port. */
  listen(): Promise<void>;
  close(): Promise<void>;
}

const MAX_LINE = 2048;

/** Like Postfix smtp-sink: a loopback SMTP server that accepts everything, cheap enough for thousands of sessions. */
export async function startSink(opts: { port?: number; host?: string; name?: string } = {}): Promise<Sink> {
  const name = opts.name ?? 'sink.test';
  const host = opts.host ?? '127.0.0.1';
  const open = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (c) => {
    sink.connections++;
    open.add(c);
    c.on('close', () => open.delete(c));
    c.on('error', () => c.destroy());
    // A forgotten session must not keep a test alive.
    c.setTimeout(60_000, () => c.destroy());
    const fault = sink.fault;
    if (fault === 'silent') {
      c.resume();
      return;
    }
    c.write(`220 ${name} ESMTP sink\r\n`);
    let inData = false;
    let buf = '';
    let dataBytes = 0;
    let tag = '';
    c.on('data', (chunk: Buffer) => {
      if (c.destroyed) return;
      buf += chunk.toString('latin1');
      if (inData && fault !== 'none') {
        dataBytes += chunk.length;
        if (dataBytes > 64) {
          if (fault === 'finMidData') {
            // A clean close (FIN) while the message is still coming: read and discard the rest.
            c.removeAllListeners('data');
            c.resume();
            c.end();
          } else if (fault === 'rstMidData') c.resetAndDestroy();
          return;
        }
      }
      for (;;) {
        const nl = buf.indexOf('\n');
        if (nl < 0) {
          if (buf.length > MAX_LINE) {
            // A line without end: not SMTP; say so and drop what was buffered.
            buf = '';
            if (!inData) c.write('500 5.5.2 Line too long\r\n');
          }
          return;
        }
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (inData) {
          if (line === '.') {
            inData = false;
            sink.messages.push(tag);
            c.write('250 2.0.0 Ok: queued\r\n');
          } else if (!tag && /^message-id:/i.test(line)) {
            tag = line.slice(11).trim().replace(/^<|>$/g, '');
          }
          continue;
        }
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'QUIT') {
          c.end('221 2.0.0 Bye\r\n');
          return;
        }
        if (verb === 'EHLO') c.write(`250-${name}\r\n250-PIPELINING\r\n250 8BITMIME\r\n`);
        else if (verb === 'HELO' || verb === 'MAIL' || verb === 'RCPT' || verb === 'RSET' || verb === 'NOOP') c.write('250 2.0.0 Ok\r\n');
        else if (verb === 'DATA') {
          if (fault === 'rstAfter354') {
            c.write('354 End data with <CR><LF>.<CR><LF>\r\n', () => c.resetAndDestroy());
            return;
          }
          inData = true;
          tag = '';
          dataBytes = 0;
          c.write('354 End data with <CR><LF>.<CR><LF>\r\n');
        } else c.write('500 5.5.2 Error: command not recognized\r\n');
      }
    });
  });
  server.on('error', () => undefined);
  let port = opts.port ?? 0;
  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const fail = (e: Error): void => reject(e);
      server.once('error', fail);
      server.listen({ port, host, backlog: 4096 }, () => {
        server.removeListener('error', fail);
        port = (server.address() as net.AddressInfo).port;
        resolve();
      });
    });
  const stopListening = (hard = false): Promise<void> =>
    new Promise((resolve) => {
      if (!server.listening) {
        resolve();
        return;
      }
      // close() waits for open connections before its callback; the port is free at once.
      server.close();
      if (hard) for (const c of open) c.destroy();
      setImmediate(resolve);
    });
  const sink: Sink = {
    get port() {
      return port;
    },
    messages: [],
    connections: 0,
    open,
    fault: 'none',
    stopListening,
    listen,
    async close() {
      await stopListening(true);
    },
  };
  await listen();
  return sink;
}
