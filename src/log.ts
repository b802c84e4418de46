/**
 * Structured JSON logs on stderr, one object a line, written by pino. Callers
 * pass fields, never secrets: keys and SQL parameter values are not logged
 * anywhere. The redaction below is a second line of defence, not the first.
 */
import { pino, type DestinationStream } from 'pino';
import type { LogLevel } from './config.ts';

export type Fields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  /** Whether a line at `level` would be written: lets hot paths skip building fields. */
  enabled(level: Exclude<LogLevel, 'silent'>): boolean;
}

/** Field names that only a mistake would log; pino replaces their values. */
const REDACT = ['authorization', 'key', 'apiKey', 'secret', 'params', 'named'].flatMap((name) => [name, `*.${name}`]);

/**
 * `write` receives each line (with its newline); by default lines go to
 * stderr synchronously, as `process.stderr.write` did, so nothing is lost
 * when the process exits right after logging.
 */
export function createLogger(level: LogLevel, write?: (line: string) => void): Logger {
  const destination: DestinationStream = write ? { write } : pino.destination({ dest: 2, sync: true });
  const log = pino(
    {
      level,
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: REDACT, censor: '[redacted]' },
    },
    destination,
  );
  const emit = (lvl: Exclude<LogLevel, 'silent'>) => (msg: string, fields?: Fields) => {
    if (fields) log[lvl](fields, msg);
    else log[lvl](msg);
  };
  return {
    debug: emit('debug'),
    info: emit('info'),
    warn: emit('warn'),
    error: emit('error'),
    enabled: (lvl) => log.isLevelEnabled(lvl),
  };
}
