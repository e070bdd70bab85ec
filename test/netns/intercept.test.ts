// Intercept mode (TPROXY) in the netns lab: clients dial the backend's own address; etd sits on the
// path and connects onward to the original destination from the client's address (IPv4 and IPv6).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLab, type JsonLineProcess, type Lab } from '../../lab/netns.js';
import { type RunningEtd, runEtd } from '../helpers/cli.js';
import { earlyTalker, swaks } from '../helpers/nsClient.js';
import { skipPrivileged } from '../helpers/privileged.js';
import { sleep } from '../helpers/wait.js';

const skip = skipPrivileged('intercept mode end to end');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-icpt-'));
let lab: Lab;
let recorder: JsonLineProcess;
let etd: RunningEtd | undefined;

describe.skipIf(skip)('intercept mode in the lab', () => {
  beforeAll(async () => {
    lab = await createLab();
    recorder = await lab.startRecorder(lab.ns.backend, [
      { address: lab.v4.backends[0], port: 25 },
      { address: lab.v4.backends[1], port: 25 },
      { address: lab.v6.backends[0], port: 25 },
    ]);
    const file = path.join(dir, 'etd.yaml');
    fs.writeFileSync(
      file,
      `
listeners:
  - { name: icpt, mode: intercept, port: 25, destinations: [${lab.v4.backends[0]}/32, "${lab.v6.backends[0]}/128"] }
detection: { window: 500ms }
upstream: { source: clientip, connectTimeout: 3s }
api: { enabled: false }
state: { path: ":memory:" }
`,
    );
    etd = runEtd(file, ['ip', 'netns', 'exec', lab.ns.gateway]);
    await etd.waitFor((l) => l.msg === 'etd started', 15_000);
  }, 60_000);

  afterAll(async () => {
    etd?.child.kill('SIGKILL');
    await lab?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('relays to the original destination with the client address on both ends preserved (IPv4, IPv6)', async () => {
    for (const [family, client, backend] of [
      ['v4', lab.v4.client, lab.v4.backends[0]],
      ['v6', lab.v6.client, lab.v6.backends[0]],
    ] as const) {
      const t0 = Date.now();
      const out = await swaks(lab, backend);
      expect(out, `${family}: ${out}`).toMatch(/<- +250 Queued/);
      expect(Date.now() - t0, `${family}: the window applied, so etd was on the path`).toBeGreaterThanOrEqual(450);
      const c = await recorder.waitFor((e) => e.event === 'connect' && e.remoteAddress === client, 5000);
      expect(c.localAddress, family).toBe(backend);
    }
    await etd!.waitFor(() => etd!.lines.filter((l) => l.msg === 'session' && l.verdict === 'passed').length >= 2, 5000);
    const sessions = etd!.lines.filter((l) => l.msg === 'session' && l.verdict === 'passed');
    expect(sessions.map((s) => s.server)).toEqual(['original', 'original']);
  }, 60_000);

  it('early talkers to the backend address never reach it', async () => {
    for (const [client, backend] of [
      [lab.v4.client, lab.v4.backends[0]],
      [lab.v6.client, lab.v6.backends[0]],
    ] as const) {
      const before = recorder.events.filter((e) => e.event === 'connect' && e.remoteAddress === client).length;
      const r = await earlyTalker(lab, backend);
      expect(r.data).toBe('');
      await sleep(700); // past the window
      expect(recorder.events.filter((e) => e.event === 'connect' && e.remoteAddress === client).length).toBe(before);
    }
  }, 30_000);

  it('leaves destinations outside the list alone (no window, straight to the server)', async () => {
    const out = await swaks(lab, lab.v4.backends[1]);
    expect(out).toMatch(/<- +250 Queued/);
    // etd never saw it: no session line (not a timed check: swaks's own start-up varies with the machine's load).
    expect(etd!.lines.filter((l) => l.msg === 'session' && String(l.serverAddress).startsWith(lab.v4.backends[1]))).toHaveLength(0);
  }, 30_000);

  it('SIGTERM removes the intercept rules', async () => {
    etd!.child.kill('SIGTERM');
    expect(await etd!.exited).toBe(0);
    const nft = await lab.exec(lab.ns.gateway, 'nft', ['list', 'ruleset']);
    expect(nft.stdout).not.toMatch(/tproxy|table inet etd/);
  }, 30_000);
});
