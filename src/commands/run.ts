// `etd run -c FILE`: start the proxy, set up netfilter when a listener is transparent, handle signals.

import { App } from '../app.js';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { describeError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';

export function needsNetfilter(config: Config): boolean {
  return config.netfilter.manage && config.listeners.some((l) => l.mode !== 'plain');
}

export interface RunHandle {
  readonly app: App;
  stop(): Promise<void>;
}

/** Starts etd with a validated config; resolves once listening. Signals are wired by the caller. */
export async function startEtd(config: Config, logger: Logger): Promise<RunHandle> {
  const netfilter = needsNetfilter(config) ? await import('../netfilter/setup.js') : undefined;
  if (netfilter) {
    try {
      await netfilter.applyNetfilter(config, logger);
    } catch (e) {
      // Routing goes in before the nft batch: a failed batch must not leave half a setup behind.
      await netfilter.removeNetfilter(config, logger).catch(() => undefined);
      throw e;
    }
  }
  const app = new App(config, logger);
  try {
    await app.start();
  } catch (e) {
    await app.stop(0);
    if (netfilter) await netfilter.removeNetfilter(config, logger).catch(() => undefined);
    throw e;
  }
  return {
    app,
    async stop() {
      await app.stop();
      // Remove what was applied at start: netfilter settings are not changed by a reload.
      if (netfilter) await netfilter.removeNetfilter(config, logger);
    },
  };
}

/** The long-running command: start, then serve until SIGTERM/SIGINT; SIGHUP re-reads the file. */
export async function runCommand(file: string): Promise<number> {
  const config = loadConfig(file);
  const log = createLogger(config.log.level);
  const handle = await startEtd(config, log);
  log.info({ config: file, listeners: config.listeners.map((l) => `${l.name}/${l.mode}`), pid: process.pid }, 'etd started');
  let reloading = Promise.resolve();
  process.on('SIGHUP', () => {
    reloading = reloading.then(async () => {
      try {
        const next = loadConfig(file);
        await handle.app.reload(next);
        log.info({ config: file }, 'configuration reloaded');
      } catch (e) {
        log.error({ err: describeError(e) }, 'reload refused; the running configuration stays');
      }
    });
  });
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal, sessions: handle.app.sessions.size }, 'stopping: no new connections; relayed sessions may finish');
      handle.stop().then(
        () => {
          log.info({}, 'stopped');
          resolve(0);
        },
        (e) => {
          log.error({ err: describeError(e) }, 'stop failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}
