#!/usr/bin/env node
// The etd command line: run | check | rules | doctor | status — argument parsing and exit codes only.

import { parseArgs } from 'node:util';
import { EtdError, describeError } from './errors.js';

const USAGE = `usage: etd <command> [options]

commands:
  run     -c FILE             start the proxy (foreground; SIGHUP reloads, SIGTERM stops)
  check   -c FILE             validate a config file and print the effective config
  rules   show|apply|remove -c FILE
                              inspect or manage etd's nftables table and policy routing
  doctor  -c FILE [--json] [--client ADDRESS]
                              check capabilities, kernel support, rules, sysctls and each
                              backend's return path; every finding with its fix (exit 1 on FAIL)
  status  [--json] [--url URL | --socket PATH] [--token T]
                              summary of a running etd from its management API
  version                     print the version

options:
  -c, --config FILE           configuration file (default /etc/etd/etd.yaml)
  --client ADDRESS            doctor: the client address its return-path test spoofs
                              (default: an unused address of the listener's network)
  -h, --help                  this text
`;


const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c', default: '/etc/etd/etd.yaml' },
      help: { type: 'boolean', short: 'h' },
      json: { type: 'boolean' },
      url: { type: 'string' },
      socket: { type: 'string' },
      token: { type: 'string' },
      client: { type: 'string' },
    },
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
      return doctorCommand(loadConfig(file), { json: !!values.json, configFile: file, ...(client === undefined ? {} : { client }) }, out);
    }
    case 'status': {
      const { statusCommand, apiTarget } = await import('./commands/status.js');
      let target: { url?: string; socket?: string; token?: string } = { url: 'http://127.0.0.1:8025' };
      try {
        const { loadConfig } = await import('./config/load.js');
        target = apiTarget(loadConfig(file).api);
      } catch {
        /* no readable config: the default address, or --url/--socket */
      }
      if (values.url) target = { url: values.url as string, token: target.token };
      if (values.socket) target = { socket: values.socket as string, token: target.token };
      if (values.token) target = { ...target, token: values.token as string };
      return statusCommand({ ...target, json: !!values.json }, out);
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
    if (e instanceof EtdError) process.stderr.write(`etd: ${e.code}: ${e.message}\n`);
    else if ((e as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`etd: ${(e as Error).message}\n\n${USAGE}`);
      process.exitCode = 2;
      return;
    } else process.stderr.write(`etd: ${describeError(e)}\n`);
    process.exitCode = 1;
  },
);
