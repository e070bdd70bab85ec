// PROXY protocol upstream against a real Postfix smtpd (smtpd_upstream_proxy_protocol = haproxy): Postfix logs the client's address that etd saw, not etd's own.
//
// An isolated Postfix instance runs from its own config directory under a temp dir (its own queue,
// data directory and maillog_file, listening on 127.0.0.1 high ports), so it never touches the
// host's Postfix. Mail is accepted and discarded (discard transport). Clients send from
// 127.0.0.5 while etd listens on and connects from 127.0.0.1: Postfix can only know 127.0.0.5
// from the PROXY header. Postfix must be started as root (its master drops privileges itself).

import fs from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { freePort, type PostfixInstance, postfixMissing, run, SWAKS, startPostfix } from '../helpers/postfix.js';
import { waitFor } from '../helpers/wait.js';

const CI = process.env.CI === 'true' || process.env.CI === '1';
const CLIENT = '127.0.0.5';

const why = postfixMissing();
if (why && !CI) console.warn(`postfix.test.ts skipped: ${why}`);

/** The remote addresses of established TCP connections to local port `port` (IPv4, from /proc/net/tcp). */
function tcpPeersOf(port: number): string[] {
  const peers: string[] = [];
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== '01') continue; // 01 = ESTABLISHED
    const [, localPort] = f[1]!.split(':');
    if (Number.parseInt(localPort!, 16) !== port) continue;
    const [remoteHex] = f[2]!.split(':');
    const n = Number.parseInt(remoteHex!, 16); // little-endian on x86 and arm64
    peers.push([n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join('.'));
  }
  return peers;
}

interface ProxyPostfix extends PostfixInstance {
  /** smtpd with smtpd_upstream_proxy_protocol = haproxy */
  readonly proxyPort: number;
  /** smtpd without the PROXY protocol (the control) */
  readonly plainPort: number;
}

/** Mail is accepted and thrown away (the test is about what smtpd logs, not delivery). */
async function startProxyPostfix(): Promise<ProxyPostfix> {
  const proxyPort = await freePort();
  const plainPort = await freePort();
  const pf = await startPostfix({
    name: 'postfix',
    hostname: 'etd-postfix-test.localdomain',
    mainCf: [
      'default_transport = discard:etd-test',
      'local_transport = discard:etd-test',
      'smtpd_upstream_proxy_protocol = haproxy',
      'smtpd_upstream_proxy_timeout = 5s',
      'smtpd_client_port_logging = yes',
      'smtp_dns_support_level = disabled',
    ],
    listeners: [
      `127.0.0.1:${proxyPort} inet n - n - - smtpd`,
      `127.0.0.1:${plainPort} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=`,
    ],
    readyPort: plainPort,
  });
  return { ...pf, proxyPort, plainPort };
}

/** swaks from 127.0.0.5 through etd; returns Postfix's queue id. */
async function sendWithSwaks(port: number, subject: string): Promise<string> {
  const r = await run(
    SWAKS,
    [
      '--server',
      '127.0.0.1',
      '--port',
      String(port),
      '--local-interface',
      CLIENT,
      '--helo',
      'client.example',
      '--from',
      'a@example.org',
      '--to',
      'b@example.net',
      '--header',
      `Subject: ${subject}`,
      '--timeout',
      '15',
    ],
    30_000,
  );
  expect(r.code, `swaks failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
  const m = /250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)/.exec(r.stdout);
  expect(m, r.stdout).not.toBeNull();
  return m![1]!;
}

describe.skipIf(why !== undefined && !CI)('PROXY protocol to a real Postfix smtpd', () => {
  let postfix: ProxyPostfix | undefined;
  const etds: TestEtd[] = [];

  beforeAll(async () => {
    if (why) throw new Error(`CI must run this test: ${why}`);
    postfix = await startProxyPostfix();
  }, 60_000);

  afterAll(async () => {
    for (const e of etds) await e.stop(500);
    await postfix?.stop();
  }, 60_000);

  async function etdTo(source: string, port: number): Promise<TestEtd> {
    const etd = await startEtdForTest({
      detection: { window: '300ms' },
      upstream: { source, servers: [{ name: 'postfix', address: '127.0.0.1', port }] },
    });
    etds.push(etd);
    return etd;
  }

  /** The client's port as etd saw it, from the session summary of the client at 127.0.0.5. */
  async function clientPortSeenByEtd(etd: TestEtd, before: number): Promise<number> {
    const sums = await etd.waitForSummaries(before + 1);
    const s = sums.slice(before).find((x) => x.clientAddress === CLIENT);
    expect(s, JSON.stringify(sums)).toBeDefined();
    expect(s!.verdict).toBe('passed');
    return Number(s!.client.split(':').pop());
  }

  for (const source of ['proxy-v2', 'proxy-v1'] as const) {
    it(`upstream.source ${source}: Postfix logs the client's address and port (${CLIENT}), not etd's 127.0.0.1`, async () => {
      const pf = postfix!;
      const etd = await etdTo(source, pf.proxyPort);
      const queueId = await sendWithSwaks(etd.port, `etd ${source}`);
      const port = await clientPortSeenByEtd(etd, 0);
      const esc = queueId.replace(/[^0-9A-Za-z]/g, '');
      const line = await waitFor(() => new RegExp(`postfix/smtpd\\[\\d+\\]: ${esc}: client=([^\\s]+)`).exec(pf.log())?.[1], {
        what: `Postfix's client= line for ${queueId}`,
        timeout: 10_000,
        detail: pf.log,
      });
      console.log(`${source}: etd saw ${CLIENT}:${port}; Postfix logged ${queueId}: client=${line}`);
      expect(line).toMatch(new RegExp(`\\[127\\.0\\.0\\.5\\]:${port}$`));
      await waitFor(() => new RegExp(`${esc}: to=<b@example\\.net>.*status=sent`).test(pf.log()), {
        what: `${queueId} accepted and discarded`,
        timeout: 10_000,
        detail: pf.log,
      });
    });
  }

  it('proxy-v2: while a session is open, the only TCP peer Postfix has is 127.0.0.1 (etd), and Postfix names 127.0.0.5', async () => {
    const pf = postfix!;
    const etd = await etdTo('proxy-v2', pf.proxyPort);
    const s = net.connect({ port: etd.port, host: '127.0.0.1', localAddress: CLIENT });
    try {
      let got = '';
      s.on('data', (c: Buffer) => (got += c.toString('latin1')));
      s.on('error', () => undefined);
      await waitFor(() => /^220 etd-postfix-test\.localdomain /m.test(got), {
        what: 'the Postfix greeting through etd',
        timeout: 10_000,
        detail: () => got,
      });
      const clientPort = s.localPort!;
      const peers = tcpPeersOf(pf.proxyPort);
      const logged = await waitFor(
        () => new RegExp(`postfix/smtpd\\[\\d+\\]: connect from ([^\\s]*\\[127\\.0\\.0\\.5\\]:${clientPort})`).exec(pf.log())?.[1],
        { what: `Postfix's connect line for ${CLIENT}:${clientPort}`, timeout: 10_000, detail: pf.log },
      );
      console.log(`proxy-v2: TCP peers of Postfix's port ${pf.proxyPort}: ${peers.join(', ')}; Postfix logged "connect from ${logged}"`);
      expect(peers).toEqual(['127.0.0.1']);
      s.write('QUIT\r\n');
      await waitFor(() => /^221 /m.test(got), { what: '221', timeout: 10_000, detail: () => got });
    } finally {
      s.destroy();
    }
  });

  it('control: without the PROXY header (source self, a smtpd without haproxy) Postfix logs etd, 127.0.0.1', async () => {
    const pf = postfix!;
    const etd = await etdTo('self', pf.plainPort);
    const queueId = await sendWithSwaks(etd.port, 'etd self');
    const esc = queueId.replace(/[^0-9A-Za-z]/g, '');
    const line = await waitFor(() => new RegExp(`postfix/smtpd\\[\\d+\\]: ${esc}: client=([^\\s]+)`).exec(pf.log())?.[1], {
      what: `Postfix's client= line for ${queueId}`,
      timeout: 10_000,
      detail: pf.log,
    });
    console.log(`self: Postfix logged ${queueId}: client=${line}`);
    expect(line).toMatch(/\[127\.0\.0\.1\]:\d+$/);
  });
});
