// `etd check -c FILE`: validate a config file and print the effective config (defaults filled in).

import { configToYaml, loadConfig } from '../config/load.js';

export function checkCommand(file: string, out: (s: string) => void): number {
  const config = loadConfig(file);
  out(`# ${file}: OK — effective configuration (defaults filled in)\n`);
  out(configToYaml(config));
  return 0;
}
