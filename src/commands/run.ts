// `etd run -c FILE`: start the proxy, set up netfilter when a listener is transparent, handle signals.

import type { ApiHandle } from '../api/server.js';
import { App } from '../app.js';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { describeError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { dropPrivileges, logPrivileges } from '../privilege/drop.js';
import { notifyReady, notifyStopping } from '../systemd/notify.js';
import { installLastResort } from '../util/lastResort.js';
import { VERSION } from '../version.js';

export function needsNetfilter(config: Config): boolean {
  return config.netfilter.manage && config.listeners.some((l) => l.mode !== 'plain');
}

export interface RunHandle {
  readonly app: App;
  stop(): Promise<void>;
}

/** Starts etd with a validated config; resolves once listening. Signals are wired by the caller. */
export async function startEtd(config: Config, logger: Logger, configFile = 'FILE'): Promise<RunHandle> {
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
  if (config.listeners.some((l) => l.mode !== 'plain')) {
    // After the rules went in: refuse to start when transparency cannot work (capabilities,
    // kernel support, src_valid_mark), rather than fail every session silently.
    const { preflight } = await import('./doctor.js');
    try {
      await preflight(config, logger, configFile);
    } catch (e) {
      if (netfilter) await netfilter.removeNetfilter(config, logger).catch(() => undefined);
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
  const unwatch =
    netfilter && config.netfilter.watchMs > 0
      ? (await import('../netfilter/watch.js')).watchNetfilter(config, logger, config.netfilter.watchMs)
      : undefined;
  return {
    app,
    async stop() {
      unwatch?.();
      await app.stop();
      // Remove what was applied at start: netfilter settings are not changed by a reload.
      if (netfilter) await netfilter.removeNetfilter(config, logger);
    },
  };
}

/**
 * After a stop the process ends when nothing is left to run. Should anything still hold it (an
 * engine thread that did not end after a failed stop), it ends 3 s later all the same: a stopped
 * etd never lingers as a process.
 */
function exitSoon(code: number): void {
  setTimeout(() => process.exit(code), 3000).unref();
}

/** The long-running command: start, then serve until SIGTERM/SIGINT; SIGHUP re-reads the file. */
export async function runCommand(file: string): Promise<number> {
  const config = loadConfig(file);
  // Root outside systemd: re-executes as config.user right here (same PID), before any logging.
  const privileges = dropPrivileges(config, file);
  const log = createLogger(config.log.level);
  installLastResort(log);
  logPrivileges(log, privileges);
  const handle = await startEtd(config, log, file);
  // SIGHUP and POST /v1/reload share one queue, so two reloads never interleave.
  let reloading: Promise<unknown> = Promise.resolve();
  const reload = (): Promise<void> => {
    const run = reloading.then(async () => {
      const next = loadConfig(file);
      await handle.app.reload(next);
      log.info({ config: file }, 'configuration reloaded');
    });
    reloading = run.catch(() => undefined);
    return run;
  };
  let api: ApiHandle | undefined;
  if (config.api.enabled) {
    try {
      // Loaded only when enabled: fastify, TypeBox's compiler and prom-client are about 8 MB of a gateway's RSS.
      const { startApi } = await import('../api/server.js');
      api = await startApi(config.api, { app: handle.app, version: VERSION, log, reload, configFile: file });
    } catch (e) {
      await handle.stop();
      throw e;
    }
  }
  notifyReady();
  log.info(
    { config: file, version: VERSION, listeners: config.listeners.map((l) => `${l.name}/${l.mode}`), pid: process.pid },
    'etd started',
  );
  process.on('SIGHUP', () => {
    reload().catch((e: unknown) => log.error({ err: describeError(e) }, 'reload refused; the running configuration stays'));
  });
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      notifyStopping();
      log.info({ signal, sessions: handle.app.sessions.size }, 'stopping: no new connections; relayed sessions may finish');
      // The API stays up through the grace time so operators can watch sessions drain.
      handle
        .stop()
        .then(() => api?.close())
        .then(
          () => {
            log.info({}, 'stopped');
            exitSoon(0);
            resolve(0);
          },
          (e) => {
            log.error({ err: describeError(e) }, 'stop failed');
            exitSoon(1);
            resolve(1);
          },
        );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}
