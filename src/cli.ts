#!/usr/bin/env node
// The etd command line: run | check | rules | doctor | status | version — dispatch and exit codes only (the commands and options are described in cliSpec.ts).

import { parseArgs } from 'node:util';
import { parseArgsOptions, renderUsage } from './cliSpec.js';
import { describeError, EtdError } from './errors.js';

const USAGE = renderUsage();

const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);

async function main(argv: string[]): Promise<number> {
  // Removed on purpose: a secret in argv is readable by every user through ps and /proc.
  if (argv.some((a) => a === '--token' || a.startsWith('--token='))) {
    process.stderr.write(
      'etd: --token was removed: a token on the command line shows in ps; use --token-file FILE or the ETD_TOKEN environment variable\n',
    );
    return 2;
  }
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: parseArgsOptions(),
  });
  const [command, sub] = positionals;
  if (values.help || !command) {
    out(USAGE);
    return command || values.help ? 0 : 2;
  }
  const file = values.config as string;
  switch (command) {
    case 'run': {
      const { runCommand } = await import('./commands/run.js');
      return runCommand(file);
    }
    case 'check': {
      const { checkCommand } = await import('./commands/check.js');
      return checkCommand(file, out);
    }
    case 'rules': {
      if (sub !== 'show' && sub !== 'apply' && sub !== 'remove') {
        process.stderr.write(`etd rules: expected show, apply or remove (got ${sub ?? 'nothing'})\n`);
        return 2;
      }
      const { loadConfig } = await import('./config/load.js');
      const { rulesCommand } = await import('./commands/rules.js');
      return rulesCommand(sub, loadConfig(file), out);
    }
    case 'doctor': {
      const { loadConfig } = await import('./config/load.js');
      const { doctorCommand } = await import('./commands/doctor.js');
      const client = values.client as string | undefined;
      const probes = (values.probe as string[] | undefined) ?? [];
      return doctorCommand(
        loadConfig(file),
        { json: !!values.json, configFile: file, probes, ...(client === undefined ? {} : { client }) },
        out,
      );
    }
    case 'status': {
      const { statusCommand, apiTarget, statusToken } = await import('./commands/status.js');
      let target: { url?: string; socket?: string; token?: string } = { url: 'http://127.0.0.1:8025' };
      try {
        const { loadConfig } = await import('./config/load.js');
        target = apiTarget(loadConfig(file).api);
      } catch {
        /* no readable config: the default address, or --url/--socket */
      }
      if (values.url) target = { url: values.url as string, token: target.token };
      if (values.socket) target = { socket: values.socket as string, token: target.token };
      const token = statusToken(values['token-file'] as string | undefined, process.env.ETD_TOKEN, target.token);
      if (typeof token === 'object') {
        process.stderr.write(`etd status: ${token.error}\n`);
        return 1;
      }
      const { token: _fromConfig, ...where } = target;
      return statusCommand({ ...where, ...(token === undefined ? {} : { token }), json: !!values.json }, out);
    }
    case 'version': {
      const { VERSION } = await import('./version.js');
      out(VERSION);
      return 0;
    }
    default:
      process.stderr.write(`etd: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

// `etd doctor | head`: a closed pipe ends the output, it is not a crash.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    if (e instanceof EtdError && e.code === 'ETD_ERR_USAGE') {
      process.stderr.write(`etd: ${e.code}: ${e.message}\n`);
      process.exitCode = 2;
      return;
    }
    if (e instanceof EtdError) process.stderr.write(`etd: ${e.code}: ${e.message}\n`);
    else if (
      (e as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ||
      (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')
    ) {
      process.stderr.write(`etd: ${(e as Error).message}\n\n${USAGE}`);
      process.exitCode = 2;
      return;
    } else process.stderr.write(`etd: ${describeError(e)}\n`);
    process.exitCode = 1;
  },
);
