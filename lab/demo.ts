// `npm run demo`: etd's main job shown end to end — in a network-namespace lab when run as root
// (vip mode: the backend sees the client's real address), else on loopback in plain mode.

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CLI_PATH as CLI, PACKAGE_ROOT as ROOT } from '../src/paths.js';
import { type Forward, forwardIntoNamespace } from './forward.js';
import { createLab, type JsonEvent, type JsonLineProcess, type Lab } from './netns.js';
import { inNamespace, type RunningUnbound, startUnbound } from './unbound.js';
import { botAddresses, botWave } from './wave.js';

const WINDOW = '2s';

const say = (s = '') => process.stdout.write(`${s}\n`);

/** `npm run demo -- --keep`: leave etd and the lab running (dashboard open) until Ctrl-C. */
const KEEP = process.argv.includes('--keep');

/**
 * With --keep: say where the dashboard is and wait for Ctrl-C (SIGINT) or SIGTERM; true once
 * that came. The lab's own signal handler has by then ended its processes (etd included) and
 * deleted its namespaces, etd's rules with them, so the caller only tidies up.
 */
async function keepUntilSignal(dashboard: string): Promise<boolean> {
  if (!KEEP) return false;
  say(`\n--keep: etd and the lab stay up. Open the dashboard: ${dashboard}`);
  say('press Ctrl-C to stop etd and tear everything down.');
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  say('\nstopping: etd and the demo processes are ended (in the lab, its namespaces are deleted).');
  return true;
}

function canUseNetns(): string | undefined {
  if (process.env.ETD_DEMO_LOOPBACK === '1') return 'ETD_DEMO_LOOPBACK=1';
  if (process.getuid?.() !== 0) return 'not running as root';
  const probe = `etddemo${process.pid}`;
  try {
    execFileSync('ip', ['netns', 'add', probe], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'del', probe], { stdio: 'ignore' });
    execFileSync('nft', ['--version'], { stdio: 'ignore' });
    return undefined;
  } catch {
    return 'network namespaces or nft are not available';
  }
}

/** Raw early talker, run with `node -e` in the client namespace (or here). */
const EARLY = `const s=require('net').connect({host:process.argv[1],port:+process.argv[2]},()=>s.write('EHLO bot.example\\r\\n'));
let d='';s.on('data',c=>d+=c);const f=h=>{console.log(JSON.stringify({how:h,data:d}));process.exit(0)};
s.on('error',e=>f(e.code));s.on('close',()=>f('closed'));setTimeout(()=>f('timeout'),8000);`;

/** A polite client from a given address: waits for the first line, says QUIT; when it came and what it was. */
const POLITE_FROM = `const t0=Date.now();const s=require('net').connect({host:process.argv[1],port:+process.argv[2],localAddress:process.argv[3]});
let d='',first;s.on('data',c=>{first??=Date.now()-t0;d+=c;if(/^220 /m.test(d))s.end('QUIT\\r\\n')});
const f=h=>{console.log(JSON.stringify({how:h,firstMs:first,data:d}));process.exit(0)};s.on('error',e=>f(e.code));s.on('close',()=>f('closed'));setTimeout(()=>f('timeout'),8000);`;

interface EtdProcess {
  lines: JsonEvent[];
  waitFor(pred: (e: JsonEvent) => boolean, ms: number): Promise<JsonEvent>;
  stop(): Promise<void>;
}

function followEtd(p: JsonLineProcess): EtdProcess {
  return {
    lines: p.events,
    waitFor: (pred, ms) => p.waitFor(pred, ms),
    stop: () => p.stop(5000),
  };
}

function sessionTable(lines: JsonEvent[]): void {
  const rows = lines.filter((l) => l.msg === 'session');
  say('  client                          verdict        detail');
  for (const r of rows) {
    const lists = Array.isArray(r.lists)
      ? (r.lists as Array<{ name: string; answer: string }>).map((l) => `${l.name} ${l.answer}`).join(', ')
      : '';
    const detail =
      r.verdict === 'early_talker'
        ? `talked after ${String(r.talkedAfterMs)} ms: "${String(r.earlyBytes)}" → ${String(r.cause)}`
        : r.verdict === 'dnsbl'
          ? `DNSBL score ${String(r.score)} (${lists}) → ${String(r.cause)}, never connected upstream`
          : `server ${String(r.server)} (${String(r.serverAddress)}), connect ${String(r.connectMs)} ms, ${String(r.bytesFromClient)}/${String(r.bytesToClient)} bytes, ${String(r.cause)}${r.allowlisted ? `; allowlisted (score ${String(r.score)}: ${lists}), held ${String(r.heldMs)} ms` : ''}`;
    say(`  ${String(r.client).padEnd(31)} ${String(r.verdict).padEnd(14)} ${detail}`);
  }
}

async function labDemo(): Promise<void> {
  say('etd demo: network-namespace lab, vip mode (transparent: source = client IP)');
  say('building the lab: client ns ── gateway ns (etd) ── backend ns (recording SMTP server) …');
  const lab: Lab = await createLab();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-demo-'));
  // etd run as root drops to the `etd` user where it exists (docs/security.md): it must still read its config here.
  fs.chmodSync(tmp, 0o755);
  let dashboardForward: Forward | undefined;
  let unbound: RunningUnbound | undefined;
  try {
    say(`  client  ${lab.v4.client}  ${lab.v6.client}`);
    say(`  etd     ${lab.v4.gatewayClientSide}:25  [${lab.v6.gatewayClientSide}]:25`);
    say(`  backend ${lab.v4.backends[0]}:25  [${lab.v6.backends[0]}]:25`);
    const recorder = await lab.startRecorder(lab.ns.backend, [
      { address: lab.v4.backends[0], port: 25 },
      { address: lab.v6.backends[0], port: 25 },
    ]);
    // Two more client addresses: one on a DNS blocklist, one on an allowlist, served by a real
    // unbound in the backend namespace.
    const listed = `10.${lab.x}.1.3`;
    const allowed = `10.${lab.x}.1.4`;
    await lab.exec(lab.ns.client, 'ip', ['-batch', '-'], {
      input: `addr add ${listed}/24 dev ${lab.ifaces.client}\naddr add ${allowed}/24 dev ${lab.ifaces.client}\n`,
    });
    unbound = await startUnbound(inNamespace(lab, lab.ns.backend), lab.v4.backends[1], [
      { zone: 'bl.demo.test', listed: { [listed]: '127.0.0.2' } },
      { zone: 'wl.demo.test', listed: { [allowed]: '127.0.10.2' } },
    ]);
    say(
      `  DNS     unbound on ${unbound.address}:53: bl.demo.test lists ${listed} (weight 3), wl.demo.test allowlists ${allowed} (weight -2)`,
    );
    const cfg = path.join(tmp, 'etd.yaml');
    fs.writeFileSync(
      cfg,
      `listeners:
  - { name: smtp4, address: ${lab.v4.gatewayClientSide}, port: 25, mode: vip }
  - { name: smtp6, address: "${lab.v6.gatewayClientSide}", port: 25, mode: vip }
detection: { window: ${WINDOW}, action: drop }
upstream:
  source: clientip
  servers:
    - { name: backend4, address: ${lab.v4.backends[0]}, port: 25 }
    - { name: backend6, address: "${lab.v6.backends[0]}", port: 25 }
reputation:
  resolvers: [${unbound.address}]
  dnsbl:
    - { zone: bl.demo.test, weight: 3 }
    - { zone: wl.demo.test, weight: -2, match: ["127.0.[0..255].[1..3]"] }
api: { address: 127.0.0.1, port: 8025 }
state: { path: ":memory:" }
log: { level: info }
`,
    );
    say(`starting etd in the gateway namespace (window ${WINDOW}) …`);
    const etd = followEtd(lab.spawnJson(lab.ns.gateway, process.execPath, [CLI, 'run', '-c', cfg]));
    await etd.waitFor((l) => l.msg === 'etd started', 15_000);
    // etd's API listens on the gateway namespace's loopback; a relay makes it reachable here.
    dashboardForward = await forwardIntoNamespace(lab, lab.ns.gateway, '127.0.0.1', 8025, 8025);
    const dashboard = `${dashboardForward.url}/ui/`;
    say(`dashboard: ${dashboard}${KEEP ? '' : '  (run with --keep to keep it up: npm run demo -- --keep)'}`);
    const nft = await lab.exec(lab.ns.gateway, 'nft', ['list', 'table', 'inet', 'etd']);
    say('etd installed its netfilter table:');
    say(nft.stdout.trimEnd().replace(/^/gm, '  '));

    for (const [family, server] of [
      ['IPv4', lab.v4.gatewayClientSide],
      ['IPv6', lab.v6.gatewayClientSide],
    ] as const) {
      say(`\npolite client (swaks, ${family}) waits for the greeting and sends a message …`);
      const t0 = Date.now();
      const r = await lab.exec(
        lab.ns.client,
        'swaks',
        ['--to', 'rcpt@example.net', '--from', 'sender@example.org', '--server', server, '--port', '25', '--timeout', '15'],
        { allowFailure: true, timeoutMs: 30_000 },
      );
      const queued = /<- +250 Queued/.test(r.stdout);
      say(`  swaks: ${queued ? 'message accepted' : 'FAILED'} after ${Date.now() - t0} ms (the greeting came after the ${WINDOW} window)`);
    }
    say('\nearly talker (sends EHLO before the greeting, like a spam bot) …');
    const early = await lab.exec(lab.ns.client, process.execPath, ['-e', EARLY, lab.v4.gatewayClientSide, '25'], { timeoutMs: 15_000 });
    const e = JSON.parse(early.stdout.trim()) as { how: string; data: string };
    say(`  bot: connection ${e.how === 'ECONNRESET' ? 'reset' : e.how}, received ${e.data.length} bytes`);
    await new Promise((r) => setTimeout(r, 500));

    const politeFrom = async (from: string) => {
      const out = await lab.exec(lab.ns.client, process.execPath, ['-e', POLITE_FROM, lab.v4.gatewayClientSide, '25', from], {
        timeoutMs: 15_000,
      });
      return JSON.parse(out.stdout.trim()) as { how: string; firstMs: number | undefined; data: string };
    };
    say(`\nDNSBL: a client on a blocklist (${listed}, score 3 ≥ threshold 3) waits politely …`);
    const bl = await politeFrom(listed);
    say(`  got after ${String(bl.firstMs)} ms: ${bl.data.trim() || '(nothing)'}`);
    say(`DNSWL: an allowlisted client (${allowed}, score -2 ≤ -1), first visit …`);
    const wl = await politeFrom(allowed);
    say(`  banner after ${String(wl.firstMs)} ms (the window is ${WINDOW}): ${wl.data.split('\r\n')[0]}`);
    await new Promise((r) => setTimeout(r, 300));

    const bots = botAddresses(lab, 20);
    say(`\na bot wave: 200 early talkers from ${bots.length} addresses (${bots[0]} … ${bots.at(-1)}) within 2 s …`);
    const wave = await botWave(lab, lab.v4.gatewayClientSide, { bots: bots.length, connections: 200, spreadMs: 2000 });
    await new Promise((r) => setTimeout(r, 500));
    const waveLines = etd.lines.filter((l) => l.msg === 'session' && bots.includes(String(l.clientAddress)));
    const count = (v: string) => waveLines.filter((l) => l.verdict === v).length;
    say(
      `  ${wave.opened} connections: ${count('early_talker')} early talkers dropped, ${count('denied')} turned away by the deny cache (554) — none reached the backend`,
    );

    say('\nwhat the backend saw (its own log of each connection):');
    const gateway = new Set([lab.v4.gatewayBackendSide, lab.v6.gatewayBackendSide]);
    for (const ev of recorder.events.filter((x) => x.event === 'connect' || x.event === 'message')) {
      const note = gateway.has(String(ev.remoteAddress))
        ? '   (etd health check, from its own address)'
        : ev.event === 'message'
          ? ` (${String(ev.size)} bytes)`
          : '';
      say(`  ${String(ev.event).padEnd(8)} from ${String(ev.remoteAddress)}${note}`);
    }
    const fromClient = recorder.events.filter(
      (x) => x.event === 'connect' && (x.remoteAddress === lab.v4.client || x.remoteAddress === lab.v6.client),
    ).length;
    // The bot used the client's IPv4 address too: any connection beyond the two polite ones would be its.
    const fromBot = fromClient - 2;
    say(
      `  → ${fromClient} connections from the client's real addresses; ${fromBot <= 0 ? "none from the bot's early talk" : `${fromBot} MORE than the polite clients made: the bot got through!`}`,
    );
    say('\netd session log (one line per session; the wave left out):');
    sessionTable(etd.lines.filter((l) => !bots.includes(String(l.clientAddress))));
    if (await keepUntilSignal(dashboard)) return;
    say('\nstopping etd (SIGTERM) — it removes its rules …');
    await etd.stop();
    const left = await lab.exec(lab.ns.gateway, 'nft', ['list', 'ruleset']);
    say(`  nft ruleset after stop: ${left.stdout.includes('table inet etd') ? 'etd table STILL PRESENT' : 'no etd table left'}`);
  } finally {
    await dashboardForward?.close();
    await unbound?.stop();
    await lab.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
    say('lab torn down.');
  }
}

/** Without root: the same flow on loopback in plain mode (no address spoofing possible). */
async function loopbackDemo(why: string): Promise<void> {
  say(`etd demo: embedded loopback lab, plain mode (${why}; run as root for the transparent netns demo)`);
  say('(DNSBL/DNSWL scoring is shown in the root demo only: it needs unbound in a namespace)');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-demo-'));
  const children: Array<ReturnType<typeof spawn>> = [];
  const json = (p: ReturnType<typeof spawn>) => {
    const lines: JsonEvent[] = [];
    let buf = '';
    p.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        try {
          lines.push(JSON.parse(buf.slice(0, i)) as JsonEvent);
        } catch {
          /* not JSON */
        }
        buf = buf.slice(i + 1);
      }
    });
    return lines;
  };
  const waitFor = async (lines: JsonEvent[], pred: (e: JsonEvent) => boolean, ms: number) => {
    const end = Date.now() + ms;
    for (;;) {
      const hit = lines.find(pred);
      if (hit) return hit;
      if (Date.now() > end) throw new Error('demo: timed out waiting for a process to start');
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  try {
    const rec = spawn(process.execPath, [path.join(ROOT, 'scripts/lab-recorder.mjs'), '127.0.0.1:0'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(rec);
    const recLines = json(rec);
    const ready = await waitFor(recLines, (e) => e.event === 'ready', 10_000);
    const backendPort = (ready.listening as Array<{ port: number }>)[0]!.port;
    const cfg = path.join(tmp, 'etd.yaml');
    fs.writeFileSync(
      cfg,
      `listeners: [{ name: smtp, address: 127.0.0.1, port: 0, mode: plain }]
detection: { window: ${WINDOW}, action: drop }
upstream: { source: self, health: { enabled: false }, servers: [{ name: backend, address: 127.0.0.1, port: ${backendPort} }] }
api: { address: 127.0.0.1, port: 0 }
state: { path: ":memory:" }
`,
    );
    const etd = spawn(process.execPath, [CLI, 'run', '-c', cfg], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(etd);
    const etdLines = json(etd);
    const listening = await waitFor(etdLines, (e) => e.msg === 'listening', 10_000);
    const port = String((listening.addresses as string[])[0])
      .split(':')
      .pop()!;
    say(`etd listens on 127.0.0.1:${port}, backend on 127.0.0.1:${backendPort}`);
    const apiLine = await waitFor(etdLines, (e) => e.msg === 'management API listening', 10_000);
    const dashboard = `${String(apiLine.url)}/ui/`;
    say(`dashboard: ${dashboard}${KEEP ? '' : '  (run with --keep to keep it up: npm run demo -- --keep)'}`);
    say('\npolite client (swaks) …');
    try {
      const out = execFileSync('swaks', ['--to', 'rcpt@example.net', '--server', '127.0.0.1', '--port', port, '--timeout', '15'], {
        encoding: 'utf8',
      });
      say(`  swaks: ${/<- +250 Queued/.test(out) ? 'message accepted' : 'FAILED'}`);
    } catch {
      say('  swaks is not installed (apt-get install swaks); skipping the polite client');
    }
    say('early talker …');
    const early = JSON.parse(execFileSync(process.execPath, ['-e', EARLY, '127.0.0.1', port], { encoding: 'utf8' }).trim()) as {
      how: string;
      data: string;
    };
    say(`  bot: connection ${early.how === 'ECONNRESET' ? 'reset' : early.how}, received ${early.data.length} bytes`);
    await new Promise((r) => setTimeout(r, 300));
    say('\nwhat the backend saw:');
    for (const ev of recLines.filter((x) => x.event === 'connect' || x.event === 'message'))
      say(`  ${String(ev.event).padEnd(8)} from ${String(ev.remoteAddress)}`);
    say('\netd session log:');
    sessionTable(etdLines);
    await keepUntilSignal(dashboard);
  } finally {
    for (const c of children) c.kill('SIGTERM');
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first`);
  const why = canUseNetns();
  if (why) await loopbackDemo(why);
  else await labDemo();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`demo failed: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
