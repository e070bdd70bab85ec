// The pino root logger: JSON lines on stdout, buffered, flushed on exit.

import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, dest: number | string = 1): Logger {
  // Asynchronous writes: lines written while a write is in flight are batched into the next one,
  // so a busy proxy does not pay a syscall per line, and a quiet one still shows each line at once.
  const stream = pino.destination({ dest, sync: false });
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
