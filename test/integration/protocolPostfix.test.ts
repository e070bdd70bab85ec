// Postfix's smtp client delivering through etd, with every protocol test at reject, to a Postfix smtpd that offers PIPELINING and to one that does not: the mail is delivered, no test fires.
//
// One isolated Postfix instance under a temp dir (its own queue, data directory and maillog,
// 127.0.0.1 high ports; the host's Postfix is never touched): swaks hands a message to its
// `inject` smtpd (not through etd); the queue manager gives it to the smtp client, whose
// transport for the test domain is `smtp:[127.0.0.1]:<etd>`; etd relays to one of the instance's
// `backend` smtpd services (their own myhostname, so the client does not see "mail loops back to
// myself"; mail they receive is discarded). Postfix must be started as root.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { freePort, POSTFIX, postfixMissing, run, SWAKS, stopPostfix } from '../helpers/postfix.js';
import { waitFor } from '../helpers/wait.js';

const CI = process.env.CI === 'true' || process.env.CI === '1';

const why = postfixMissing();
if (why && !CI) console.warn(`protocolPostfix.test.ts skipped: ${why}`);

const ALL_REJECT = { pipelining: { action: 'reject' }, nonSmtpCommand: { action: 'reject' }, bareNewline: { action: 'reject' } };

describe.skipIf(why !== undefined && !CI)("Postfix's smtp client through etd to Postfix, every protocol test at reject", () => {
  let dir = '';
  let etc = '';
  let maillog = '';
  let injectPort = 0;
  const etds: TestEtd[] = [];
  const log = () => (fs.existsSync(maillog) ? fs.readFileSync(maillog, 'utf8') : '');
  const masterPid = () => {
    try {
      const pid = Number(fs.readFileSync(path.join(dir, 'spool', 'pid', 'master.pid'), 'utf8').trim());
      return pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  };

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-protocol-postfix-'));
    fs.chmodSync(dir, 0o755);
    etc = path.join(dir, 'etc');
    const data = path.join(dir, 'data');
    maillog = path.join(dir, 'maillog');
    for (const d of [etc, path.join(dir, 'spool'), data]) fs.mkdirSync(d);
    const uid = Number(execFileSync('id', ['-u', 'postfix'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postfix'], { encoding: 'utf8' }).trim());
    fs.chownSync(data, uid, gid);
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
    fs.writeFileSync(
      path.join(etc, 'main.cf'),
      [
        'compatibility_level = 3.6',
        `queue_directory = ${dir}/spool`,
        `data_directory = ${data}`,
        'command_directory = /usr/sbin',
        'daemon_directory = /usr/lib/postfix/sbin',
        'shlib_directory = /usr/lib/postfix',
        'meta_directory = /etc/postfix',
        'mail_owner = postfix',
        'setgid_group = postdrop',
        'myhostname = etd-sender.localdomain',
        'mydomain = localdomain',
        'inet_interfaces = loopback-only',
        'inet_protocols = ipv4',
        'mydestination =',
        'mynetworks = 127.0.0.0/8',
        'relay_domains = pipe.test nopipe.test',
        'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination',
        // The smtp client delivers each test domain through its etd.
        `transport_maps = inline:{ pipe.test=smtp:[127.0.0.1]:${etds[0]!.port}, nopipe.test=smtp:[127.0.0.1]:${etds[1]!.port} }`,
        'smtp_connection_cache_on_demand = no',
        'smtp_dns_support_level = disabled',
        'smtp_tls_security_level = none',
        'alias_maps =',
        'alias_database =',
        `maillog_file = ${maillog}`,
        `maillog_file_prefixes = ${dir}`,
        'smtputf8_enable = no',
        'biff = no',
        // The smtp client's side of each dialogue in the maillog ("> host: MAIL FROM…", "< host: 250…"):
        // shows whether it pipelined.
        'debug_peer_list = 127.0.0.1',
        'debug_peer_level = 1',
        '',
      ].join('\n'),
    );
    const backend = (port: number, name: string, extra: string[]) =>
      `127.0.0.1:${port} inet n - n - - smtpd -o myhostname=${name} -o content_filter=discard:etd-test ${extra.join(' ')}`;
    fs.writeFileSync(
      path.join(etc, 'master.cf'),
      [
        `127.0.0.1:${injectPort} inet n - n - - smtpd`,
        backend(pipePort, 'backend-pipe.localdomain', []),
        backend(noPipePort, 'backend-nopipe.localdomain', ['-o smtpd_discard_ehlo_keywords=pipelining']),
        'pickup    unix n - n 60 1 pickup',
        'cleanup   unix n - n - 0 cleanup',
        'qmgr      unix n - n 300 1 qmgr',
        'rewrite   unix - - n - - trivial-rewrite',
        'bounce    unix - - n - 0 bounce',
        'defer     unix - - n - 0 bounce',
        'trace     unix - - n - 0 bounce',
        'verify    unix - - n - 1 verify',
        'flush     unix n - n 1000? 0 flush',
        'proxymap  unix - - n - - proxymap',
        'showq     unix n - n - - showq',
        'error     unix - - n - - error',
        'retry     unix - - n - - error',
        'discard   unix - - n - - discard',
        'smtp      unix - - n - - smtp',
        'relay     unix - - n - - smtp',
        'anvil     unix - - n - 1 anvil',
        'scache    unix - - n - 1 scache',
        'postlog   unix-dgram n - n - 1 postlogd',
        '',
      ].join('\n'),
    );
    const started = await run(POSTFIX, ['-c', etc, 'start'], 30_000);
    if (started.code !== 0) throw new Error(`postfix -c ${etc} start failed (exit ${started.code}):\n${started.out}${log()}`);
    await waitFor(
      () =>
        new Promise<boolean>((resolve) => {
          const s = net.connect({ port: injectPort, host: '127.0.0.1' });
          s.once('data', () => {
            s.end('QUIT\r\n');
            resolve(true);
          });
          s.once('error', () => resolve(false));
        }),
      { what: 'Postfix to listen', timeout: 15_000, detail: log },
    );
  }, 60_000);

  afterAll(async () => {
    for (const e of etds) await e.stop(500);
    if (!etc) return;
    await stopPostfix(etc, masterPid());
    fs.rmSync(dir, { recursive: true, force: true });
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
