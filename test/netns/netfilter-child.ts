// Child process for test/netns/netfilter.test.ts: runs one netfilter operation inside a namespace and prints the outcome as JSON.
//
// Run via runTsInNetns(ns, 'test/netns/netfilter-child.ts', [op]) with a JSON request on stdin:
//   { config?: Config, batch?: string, sub?: 'show'|'apply'|'remove' }
// Prints exactly one JSON line: { ok: true, result, logs } or { ok: false, code, message, hint }.
// An expected failure (an EtdError) is reported as ok:false with exit code 0; anything else crashes.

import { type RulesSubcommand, rulesCommand } from '../../src/commands/rules.js';
import type { Config } from '../../src/config/schema.js';
import { isEtdError } from '../../src/errors.js';
import { run } from '../../src/native/nftables.js';
import { applyNetfilter, type NetfilterLog, removeNetfilter, verifyNetfilter } from '../../src/netfilter/setup.js';

interface Request {
  readonly config?: Config;
  readonly batch?: string;
  readonly sub?: RulesSubcommand;
}

async function readStdin(): Promise<string> {
  let text = '';
  for await (const chunk of process.stdin) text += String(chunk);
  return text;
}

const logs: { level: string; obj: object; msg: string }[] = [];
const log: NetfilterLog = {
  info: (obj, msg) => logs.push({ level: 'info', obj, msg }),
  warn: (obj, msg) => logs.push({ level: 'warn', obj, msg }),
};

async function main(): Promise<unknown> {
  const op = process.argv[2];
  const req = JSON.parse(await readStdin()) as Request;
  const config = () => {
    if (!req.config) throw new Error(`${op} needs a config`);
    return req.config;
  };
  switch (op) {
    case 'apply':
      return applyNetfilter(config(), log);
    case 'verify':
      return verifyNetfilter(config());
    case 'remove':
      return removeNetfilter(config(), log);
    case 'run':
      return run(req.batch ?? '');
    case 'rules': {
      const lines: string[] = [];
      const code = await rulesCommand(req.sub ?? 'show', config(), (l) => lines.push(l));
      return { code, lines };
    }
    default:
      throw new Error(`unknown op ${op}`);
  }
}

try {
  const result = await main();
  process.stdout.write(`${JSON.stringify({ ok: true, result: result ?? null, logs })}\n`);
} catch (e) {
  if (!isEtdError(e)) throw e;
  process.stdout.write(`${JSON.stringify({ ok: false, code: e.code, message: e.message, hint: e.hint ?? null, logs })}\n`);
}
