// etd in vip mode in the netns lab: backends see the client's own address (IPv4 and IPv6), early
// talkers never reach them, SIGTERM leaves nothing behind, SIGKILL's stale state is replaced.

import fs from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import type { JsonLineProcess, Lab } from '../../lab/netns.js';
import type { RunningEtd } from '../helpers/cli.js';
import { firstBackends, type LabSuite, labSuite, labVipConfig } from '../helpers/labSuite.js';
import { earlyTalker, swaks } from '../helpers/nsClient.js';
import { skipPrivileged } from '../helpers/privileged.js';
import { sleep, waitFor } from '../helpers/wait.js';

const skip = skipPrivileged('vip mode end to end');
let suite: LabSuite;
let lab: Lab;
let recorder: JsonLineProcess;

function configFor(lab: Lab, extra = ''): string {
  return suite.writeConfig(labVipConfig(lab, { extra }));
}

function start(file: string): Promise<RunningEtd> {
  return suite.start(file, 15_000);
}

async function stop(etd: RunningEtd, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  etd.child.kill(signal);
  return etd.exited;
}

async function gatewayState(): Promise<{ nft: string; rules4: string; rules6: string; routes: string }> {
  const gw = lab.ns.gateway;
  const [nft, rules4, rules6, routes] = await Promise.all([
    lab.exec(gw, 'nft', ['list', 'ruleset']),
    lab.exec(gw, 'ip', ['rule', 'show']),
    lab.exec(gw, 'ip', ['-6', 'rule', 'show']),
    lab.exec(gw, 'ip', ['route', 'show', 'table', '100'], { allowFailure: true }),
  ]);
  return { nft: nft.stdout, rules4: rules4.stdout, rules6: rules6.stdout, routes: routes.stdout };
}

const connectsFrom = (addr: string) => recorder.events.filter((e) => e.event === 'connect' && e.remoteAddress === addr).length;

describe.skipIf(skip)('vip mode in the lab', () => {
  suite = labSuite({
    name: 'vip',
    recorder: firstBackends,
  });
  beforeAll(() => {
    ({ lab, recorder } = suite);
  });

  it('relays with the client address preserved (IPv4 and IPv6); early talkers never reach the backend; SIGTERM removes everything', async () => {
    const etd = await start(configFor(lab));
    const during = await gatewayState();
    expect(during.nft).toMatch(/table inet etd \{[\s\S]*socket transparent 1 meta mark set 0x00000001 accept/);
    expect(during.rules4).toMatch(/fwmark 0x1 lookup 100/);
    expect(during.rules6).toMatch(/fwmark 0x1 lookup 100/);

    for (const [family, client, gw] of [
      ['v4', lab.v4.client, lab.v4.gatewayClientSide],
      ['v6', lab.v6.client, lab.v6.gatewayClientSide],
    ] as const) {
      const out = await swaks(lab, gw);
      expect(out, `${family}: ${out}`).toMatch(/<- +250 Queued/);
      const msg = await recorder.waitFor((e) => e.event === 'message' && e.remoteAddress === client, 5000);
      expect(msg.remoteAddress, family).toBe(client);

      const before = connectsFrom(client);
      const early = await earlyTalker(lab, gw);
      expect(early.data, family).toBe('');
      await sleep(800); // past the window
      expect(connectsFrom(client), `${family}: early talker reached the backend`).toBe(before);
    }
    await etd.waitFor(() => etd.lines.filter((l) => l.msg === 'session').length >= 4, 5000);
    const sessions = etd.lines.filter((l) => l.msg === 'session');
    expect(sessions.filter((s) => s.verdict === 'passed')).toHaveLength(2);
    expect(sessions.filter((s) => s.verdict === 'early_talker')).toHaveLength(2);

    expect(await stop(etd)).toBe(0);
    const after = await gatewayState();
    expect(after.nft).not.toMatch(/table inet etd/);
    expect(after.rules4).not.toMatch(/fwmark 0x1/);
    expect(after.rules6).not.toMatch(/fwmark 0x1/);
    expect(after.routes.trim()).toBe('');
  }, 90_000);

  it('a teaser and action: log run on the engine too: the client sees the teaser first, an early talker is relayed from its own address (IPv4 and IPv6)', async () => {
    const file = configFor(lab);
    fs.writeFileSync(
      file,
      fs
        .readFileSync(file, 'utf8')
        .replace('detection: { window: 500ms, action: drop }', 'detection: { window: 500ms, action: log, teaser: "220-gw.example ESMTP" }'),
    );
    const etd = await start(file);
    for (const [family, client, gw] of [
      ['v4', lab.v4.client, lab.v4.gatewayClientSide],
      ['v6', lab.v6.client, lab.v6.gatewayClientSide],
    ] as const) {
      // First visit of this address (a logged early talker earns no pass): the teaser, then the
      // backend's greeting and its answer to the early EHLO — relayed from the client's address.
      const connects = recorder.events.filter((e) => e.event === 'connect' && e.remoteAddress === client).length;
      const early = await earlyTalker(lab, gw, 25, /\r\n250[- ].*\r\n/);
      expect(early.data, family).toMatch(/^220-gw\.example ESMTP\r\n220 /);
      expect(early.data, family).toMatch(/\r\n250[- ]/);
      expect(recorder.events.filter((e) => e.event === 'connect' && e.remoteAddress === client).length, family).toBe(connects + 1);
      // Still no pass earned: a polite client from the same address waits the window and sees the teaser.
      const before = recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === client).length;
      const out = await swaks(lab, gw);
      expect(out, `${family}: ${out}`).toMatch(/<- +220-gw\.example ESMTP/);
      expect(out, `${family}: ${out}`).toMatch(/<- +250 Queued/);
      await recorder.waitFor(
        () => recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === client).length > before,
        5000,
      );
    }
    await etd.waitFor(() => etd.lines.filter((l) => l.msg === 'session').length >= 4, 10_000);
    const logged = etd.lines.filter((l) => l.msg === 'session' && l.action === 'log');
    expect(logged).toHaveLength(2);
    for (const l of logged) {
      expect(l.verdict).toBe('passed');
      expect(l.earlyBytes).toBe('EHLO bot.example\\r\\n');
    }
    expect(await stop(etd)).toBe(0);
  }, 60_000);

  it('re-applies its rules when something flushes them while it runs (nftables restart)', async () => {
    const etd = await start(configFor(lab, 'netfilter: { watch: 500ms }'));
    await lab.exec(lab.ns.gateway, 'nft', ['flush', 'ruleset']);
    await lab.exec(lab.ns.gateway, 'ip', ['rule', 'del', 'fwmark', '0x1', 'lookup', '100']);
    await etd.waitFor((l) => String(l.msg).includes('re-applying'), 5000);
    const state = await waitFor(
      async () => {
        const s = await gatewayState();
        return /socket transparent 1/.test(s.nft) && /fwmark 0x1 lookup 100/.test(s.rules4) && s;
      },
      { timeout: 5000, what: 'the rules and the policy route re-applied' },
    );
    expect(state.nft).toMatch(/socket transparent 1/);
    expect(state.rules4).toMatch(/fwmark 0x1 lookup 100/);
    expect(await swaks(lab, lab.v4.gatewayClientSide)).toMatch(/<- +250 Queued/);
    expect(await stop(etd)).toBe(0);
  }, 60_000);

  it('after SIGKILL the next start replaces the stale state and works', async () => {
    const first = await start(configFor(lab));
    expect(await stop(first, 'SIGKILL')).toBe(null);
    const stale = await gatewayState();
    expect(stale.nft).toMatch(/table inet etd/);
    expect(stale.rules4).toMatch(/fwmark 0x1 lookup 100/);

    const second = await start(configFor(lab));
    const state = await gatewayState();
    expect(state.rules4.match(/fwmark 0x1 lookup 100/g)).toHaveLength(1);
    expect(state.nft.match(/socket transparent 1/g)).toHaveLength(1);
    await swaks(lab, lab.v4.gatewayClientSide);
    const msgs = recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === lab.v4.client);
    expect(msgs.length).toBeGreaterThanOrEqual(2);
    expect(await stop(second)).toBe(0);
    const after = await gatewayState();
    expect(after.nft).not.toMatch(/table inet etd/);
    expect(after.rules4).not.toMatch(/fwmark/);
  }, 90_000);

  it('a dual-stack [::] listener normalises ::ffff:-mapped IPv4 clients and connects from their IPv4 address', async () => {
    const file = configFor(lab).replace(/^.*smtp4.*\n.*smtp6.*\n/m, '');
    const text = fs
      .readFileSync(file, 'utf8')
      .replace(/listeners:\n(?: {2}- .*\n)+/, 'listeners:\n  - { name: dual, address: "::", port: 25, mode: vip }\n');
    fs.writeFileSync(file, text);
    const etd = await start(file);
    const before = recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === lab.v4.client).length;
    expect(await swaks(lab, lab.v4.gatewayClientSide)).toMatch(/<- +250 Queued/);
    expect(await swaks(lab, lab.v6.gatewayClientSide)).toMatch(/<- +250 Queued/);
    expect(recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === lab.v4.client).length).toBe(before + 1);
    // A summary is written when both sides have closed, which can trail swaks' exit a little.
    await etd.waitFor(() => etd.lines.filter((l) => l.msg === 'session').length >= 2, 5000);
    const sessions = etd.lines.filter((l) => l.msg === 'session');
    expect(sessions.map((s) => s.clientAddress)).toEqual([lab.v4.client, lab.v6.client]);
    expect(await stop(etd)).toBe(0);
  }, 60_000);

  it('a client whose address family has no server gets 421 and the summary says why', async () => {
    const file = configFor(lab);
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace(/^ *- \{ name: b6.*\n/m, ''));
    const etd = await start(file);
    const out = await swaks(lab, lab.v6.gatewayClientSide, 25, ['--quit-after', 'CONNECT']).catch((e: Error) => e.message);
    expect(out).toMatch(/421 4\.3\.2/);
    const s = await etd.waitFor((l) => l.msg === 'session' && l.verdict === 'no_server', 10_000);
    expect(String(s.hint)).toMatch(/no IPv6 server is configured/);
    expect(await stop(etd)).toBe(0);
  }, 60_000);

  it('without the divert rule the spoofed connect fails within the connect timeout and the log names the likely cause', async () => {
    // manage: false — etd installs nothing, so the backend's replies to the client address never come back to etd.
    const file = configFor(lab, 'netfilter: { manage: false }');
    // A short connect timeout: the connect is meant to time out.
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('connectTimeout: 3s', 'connectTimeout: 1s'));
    const etd = await start(file);
    const started = Date.now();
    const out = await swaks(lab, lab.v4.gatewayClientSide, 25, ['--quit-after', 'CONNECT']).catch((e: Error) => e.message);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(out).toMatch(/421 4\.3\.2/);
    const s = await etd.waitFor((l) => l.msg === 'session' && l.verdict === 'no_server', 10_000);
    expect(s.cause).toBe('connect_timeout');
    expect(String(s.hint)).toMatch(/return traffic is probably not routed through etd/);
    expect(await stop(etd)).toBe(0);
  }, 60_000);
});
