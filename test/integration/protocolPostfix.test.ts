// Postfix's smtp client delivering through etd, with every protocol test at reject, to a Postfix smtpd that offers PIPELINING and to one that does not: the mail is delivered, no test fires.
//
// One isolated Postfix instance under a temp dir (its own queue, data directory and maillog,
// 127.0.0.1 high ports; the host's Postfix is never touched): swaks hands a message to its
// `inject` smtpd (not through etd); the queue manager gives it to the smtp client, whose
// transport for the test domain is `smtp:[127.0.0.1]:<etd>`; etd relays to one of the instance's
// `backend` smtpd services (their own myhostname, so the client does not see "mail loops back to
// myself"; mail they receive is discarded). Postfix must be started as root.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { freePort, type PostfixInstance, postfixMissing, run, SWAKS, startPostfix } from '../helpers/postfix.js';
import { waitFor } from '../helpers/wait.js';

const CI = process.env.CI === 'true' || process.env.CI === '1';

const why = postfixMissing();
if (why && !CI) console.warn(`protocolPostfix.test.ts skipped: ${why}`);

const ALL_REJECT = { pipelining: { action: 'reject' }, nonSmtpCommand: { action: 'reject' }, bareNewline: { action: 'reject' } };

describe.skipIf(why !== undefined && !CI)("Postfix's smtp client through etd to Postfix, every protocol test at reject", () => {
  let postfix: PostfixInstance | undefined;
  let injectPort = 0;
  const etds: TestEtd[] = [];
  const log = () => postfix?.log() ?? '';

  beforeAll(async () => {
    injectPort = await freePort();
    const pipePort = await freePort();
    const noPipePort = await freePort();
    // etd first (its health checks are off, so the backends need not listen yet): one in front of each backend.
    for (const port of [pipePort, noPipePort]) {
      etds.push(
        await startEtdForTest({
          detection: { window: '100ms', protocol: ALL_REJECT },
          upstream: { servers: [{ name: 'postfix', address: '127.0.0.1', port }] },
        }),
      );
    }
    const backend = (port: number, name: string, extra: string[]) =>
      `127.0.0.1:${port} inet n - n - - smtpd -o myhostname=${name} -o content_filter=discard:etd-test ${extra.join(' ')}`;
    postfix = await startPostfix({
      name: 'protocol-postfix',
      hostname: 'etd-sender.localdomain',
      mainCf: [
        'relay_domains = pipe.test nopipe.test',
        // The smtp client delivers each test domain through its etd.
        `transport_maps = inline:{ pipe.test=smtp:[127.0.0.1]:${etds[0]!.port}, nopipe.test=smtp:[127.0.0.1]:${etds[1]!.port} }`,
        'smtp_connection_cache_on_demand = no',
        'smtp_dns_support_level = disabled',
        'smtp_tls_security_level = none',
        // The smtp client's side of each dialogue in the maillog ("> host: MAIL FROM…", "< host: 250…"):
        // shows whether it pipelined.
        'debug_peer_list = 127.0.0.1',
        'debug_peer_level = 1',
      ],
      listeners: [
        `127.0.0.1:${injectPort} inet n - n - - smtpd`,
        backend(pipePort, 'backend-pipe.localdomain', []),
        backend(noPipePort, 'backend-nopipe.localdomain', ['-o smtpd_discard_ehlo_keywords=pipelining']),
      ],
      readyPort: injectPort,
    });
  }, 60_000);

  afterAll(async () => {
    for (const e of etds) await e.stop(500);
    await postfix?.stop();
  }, 60_000);

  for (const [i, domain] of ['pipe.test', 'nopipe.test'].entries()) {
    it(`delivers to a backend ${domain === 'pipe.test' ? 'offering' : 'not offering'} PIPELINING: sent, passed, no test fired`, async () => {
      const etd = etds[i]!;
      const subject = `protocol-${domain}-${Date.now()}`;
      const r = await run(SWAKS, [
        '--server',
        '127.0.0.1',
        '--port',
        String(injectPort),
        '--helo',
        'client.example',
        '--from',
        'a@example.org',
        '--to',
        `b@${domain},c@${domain}`,
        '--header',
        `Subject: ${subject}`,
        '--timeout',
        '15',
      ]);
      expect(r.code, r.out).toBe(0);
      const queueId = /250 2\.0\.0 Ok: queued as (\w+)/.exec(r.out)?.[1];
      expect(queueId, r.out).toBeDefined();
      // The smtp client's delivery through etd, for both recipients.
      const sent = await waitFor(
        () => {
          const lines = log()
            .split('\n')
            .filter((l) => l.includes(`${queueId}:`) && l.includes(`relay=127.0.0.1[127.0.0.1]:${etd.port}`));
          return lines.length >= 2 ? lines : undefined;
        },
        { what: `the delivery of ${queueId} through etd`, timeout: 60_000, detail: log },
      );
      for (const l of sent) expect(l, log()).toMatch(/status=sent \(250 2\.0\.0 Ok: queued as \w+\)/);
      const sums = await etd.waitForSummaries(1);
      expect(sums.map((s) => [s.verdict, s.protocolTest])).toEqual([['passed', undefined]]);
      // Postfix's own smtpd saw no improper pipelining either.
      expect(log()).not.toMatch(/improper command pipelining/);
      // The client pipelined MAIL, RCPT, RCPT, DATA exactly where PIPELINING was offered (its debug lines: "> " sent, "< " read).
      const dialogue = log()
        .split('\n')
        .map((l) => new RegExp(`postfix/smtp\\[\\d+\\]: ([<>]) 127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${etd.port}: (.*)$`).exec(l))
        .filter((m) => m !== null)
        .map((m) => `${m[1]} ${m[2]}`);
      const mail = dialogue.findIndex((l) => l.startsWith('> MAIL FROM:'));
      expect(mail, dialogue.join('\n')).toBeGreaterThan(0);
      expect(dialogue[mail + 1]!.startsWith('> RCPT TO:'), dialogue.join('\n')).toBe(domain === 'pipe.test');
      etd.summaries.length = 0;
    }, 90_000);
  }
});
