// Benchmark options: the command line of `npm run bench` (node dist/bench/run.js), with full and --quick defaults.

import path from 'node:path';
import { parseArgs } from 'node:util';
import { CLI_PATH, PACKAGE_ROOT as ROOT } from '../src/paths.js';

export const SCENARIOS = ['held', 'sessions', 'relay', 'returning', 'profile', 'dnsbl', 'protocol'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export interface BenchOptions {
  readonly quick: boolean;
  /** Where the JSON result goes. */
  readonly json: string;
  readonly scenarios: readonly ScenarioName[];
  /** Held connections (scenario 1) and how many one client process opens at most (fd limit). */
  readonly held: number;
  readonly heldPerProcess: number;
  /** The short window of the sessions, relay and returning scenarios (both proxies). */
  readonly windowMs: number;
  /** smtp-source -s / -m / -l for the sessions scenario. */
  readonly sessions: { readonly parallel: number; readonly messages: number; readonly size: number };
  /** smtp-source -s / -m / -l with -d (messages over kept connections) for the relay scenario. */
  readonly relay: { readonly parallel: number; readonly messages: number; readonly size: number };
  /** Returning sender: client addresses (one first visit each) and sequential connections measured. */
  readonly returning: { readonly addresses: number; readonly samples: number };
  /** Also run the multi-thread pair — etd with `workers: auto`, HAProxy with its default nbthread (one thread per CPU) — in the held, sessions and relay scenarios. */
  readonly haproxyThreads: boolean;
  /** Keep the raw .cpuprofile and .heapsnapshot files here (default: summarised, then deleted). */
  readonly keepProfiles: string | undefined;
  /** The etd build measured (default dist/src/cli.js of this tree): another build's cli.js for an A/B comparison. */
  readonly etdCli: string;
  /** The whole run's hard limit. */
  readonly deadlineMs: number;
}

export const USAGE = `usage: npm run bench -- [options]      (as root: it builds a network-namespace lab)

Measures etd and HAProxy (the original early-talker recipe) on the same load in one run and
reports each figure with its etd/HAProxy ratio. The whole run is bounded to 10 minutes.

options:
  --quick               small N and short runs (CI smoke test, development)
  --json FILE           write the JSON result here (default tmp/bench-result.json)
  --only LIST           comma-separated scenarios: ${SCENARIOS.join(',')}
                        (dnsbl: etd with three DNSBL lists served by unbound vs none; not in --quick)
                        (protocol: etd with every protocol test at reject vs off, sessions and relay; not in --quick)
  --held N              held connections in scenario 1 (default 15000; --quick 1000)
  --sessions N          smtp-source messages (sessions) in scenario 2 (default 20000)
  --parallel N          smtp-source parallel sessions in scenario 2 (default 400)
  --relay-mb N          message size in MB (10^6 bytes) in scenario 3 (default 10)
  --relay-count N       messages in scenario 3 (default 200)
  --no-haproxy-threads  skip the multi-thread pair (etd workers auto, HAProxy nbthread auto)
  --keep-profiles DIR   keep the .cpuprofile and .heapsnapshot files of the profile pass
  --deadline SECONDS    a shorter bound for the whole run (at most 600)
  --etd-cli FILE        measure this etd build's cli.js (A/B against another build; default dist/src/cli.js)
  -h, --help            this text
`;

function positiveInt(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} expects a positive number, got ${JSON.stringify(v)}`);
  return n;
}

/** Parses argv (without node and script); throws with a readable message on bad input. Returns undefined for --help. */
export function parseOptions(argv: readonly string[]): BenchOptions | undefined {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    options: {
      quick: { type: 'boolean' },
      json: { type: 'string' },
      only: { type: 'string' },
      held: { type: 'string' },
      sessions: { type: 'string' },
      parallel: { type: 'string' },
      'relay-mb': { type: 'string' },
      'relay-count': { type: 'string' },
      'no-haproxy-threads': { type: 'boolean' },
      'keep-profiles': { type: 'string' },
      'etd-cli': { type: 'string' },
      deadline: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return undefined;
  const quick = values.quick === true;
  let scenarios: ScenarioName[] = quick ? SCENARIOS.filter((s) => s !== 'profile' && s !== 'dnsbl' && s !== 'protocol') : [...SCENARIOS];
  if (values.only !== undefined) {
    const wanted = values.only
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const bad = wanted.filter((s) => !(SCENARIOS as readonly string[]).includes(s));
    if (bad.length) throw new Error(`--only: unknown scenario ${bad.join(', ')} (known: ${SCENARIOS.join(', ')})`);
    scenarios = SCENARIOS.filter((s) => wanted.includes(s));
  }
  const held = Math.round(positiveInt('held', values.held, quick ? 1000 : 15_000));
  const relayMb = positiveInt('relay-mb', values['relay-mb'], quick ? 1 : 10);
  return {
    quick,
    json: path.resolve(values.json ?? path.join(ROOT, 'tmp', 'bench-result.json')),
    scenarios,
    held,
    heldPerProcess: 5000,
    windowMs: 100,
    sessions: {
      parallel: Math.round(positiveInt('parallel', values.parallel, quick ? 50 : 400)),
      messages: Math.round(positiveInt('sessions', values.sessions, quick ? 1000 : 20_000)),
      size: 2000,
    },
    relay: {
      parallel: quick ? 2 : 4,
      messages: Math.round(positiveInt('relay-count', values['relay-count'], quick ? 20 : 200)),
      size: Math.round(relayMb * 1_000_000),
    },
    returning: quick ? { addresses: 5, samples: 20 } : { addresses: 50, samples: 200 },
    haproxyThreads: !quick && values['no-haproxy-threads'] !== true,
    keepProfiles: values['keep-profiles'] === undefined ? undefined : path.resolve(values['keep-profiles']),
    etdCli: path.resolve(values['etd-cli'] ?? CLI_PATH),
    deadlineMs: Math.round(Math.min(600, positiveInt('deadline', values.deadline, 600)) * 1000),
  };
}
