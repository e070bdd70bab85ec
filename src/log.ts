// The pino root logger: JSON lines on stdout, buffered, flushed on exit.

import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, dest: number | string = 1): Logger {
  // Asynchronous, buffered writes: one summary line per session must not cost a syscall each.
  const stream = pino.destination({ dest, sync: false, minLength: 4096 });
  const log = pino(
    {
      level,
      base: { svc: 'etd' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
  const flush = () => {
    try {
      stream.flushSync();
    } catch {
      /* stdout already gone */
    }
  };
  process.once('exit', flush);
  return log;
}
