// The last line of defence: an exception or rejection nothing caught is logged with its stack (through pino, flushed) before etd exits.
//
// Every handler of outside input has its own guard; this only runs for a bug. Node's default
// would print the stack on stderr, out of the JSON log the operator reads, so it goes there.

import type { Logger } from 'pino';
import { describeError } from '../errors.js';

/** What is logged for an uncaught error: its message and stack (a non-Error value as text). */
export function fatalFields(
  kind: 'uncaughtException' | 'unhandledRejection',
  e: unknown,
): { kind: string; err: string; stack: string | undefined } {
  return { kind, err: describeError(e), stack: e instanceof Error ? e.stack : undefined };
}

/**
 * Installs the handlers; returns their removal. `exit` runs once the line is flushed (or after
 * 1 s if the flush does not call back): etd does not run on in an unknown state.
 */
export function installLastResort(log: Logger, exit: (code: number) => void = (code) => process.exit(code)): () => void {
  let exiting = false;
  const handler = (kind: 'uncaughtException' | 'unhandledRejection') => (e: unknown) => {
    try {
      log.fatal(fatalFields(kind, e), `etd stops: ${kind} (a bug; report this line with its stack)`);
    } catch {
      /* the logger itself failed: exit all the same */
    }
    if (exiting) return;
    exiting = true;
    const timer = setTimeout(() => exit(1), 1000);
    try {
      log.flush(() => {
        clearTimeout(timer);
        exit(1);
      });
    } catch {
      clearTimeout(timer);
      exit(1);
    }
  };
  const onException = handler('uncaughtException');
  const onRejection = handler('unhandledRejection');
  process.on('uncaughtException', onException);
  process.on('unhandledRejection', onRejection);
  return () => {
    process.off('uncaughtException', onException);
    process.off('unhandledRejection', onRejection);
  };
}
