// The one registry of etd's coded errors: every failure an operator can see carries one of these codes.
//
// Each code is documented in docs/errors.md (a unit test checks both directions), so an
// operator who greps a log line for ETD_ERR_* finds what it means and what to do.

export const ERROR_CODES = {
  ETD_ERR_CONFIG_READ: 'the configuration file cannot be read',
  ETD_ERR_CONFIG_PARSE: 'the configuration file is not valid YAML',
  ETD_ERR_CONFIG_INVALID: 'the configuration does not match the schema',
  ETD_ERR_LISTEN: 'a listener cannot bind or listen',
  ETD_ERR_NATIVE_LOAD: 'the native addon (etd_transparent.node) cannot be loaded',
  ETD_ERR_SYSCALL: 'a system call made by the native addon failed',
  ETD_ERR_NFT_LOAD: 'libnftables cannot be loaded',
  ETD_ERR_NFT: 'libnftables rejected a command batch',
  ETD_ERR_ROUTING: 'an iproute2 command for policy routing failed',
  ETD_ERR_PRIVILEGE: 'the operation needs privileges etd does not have',
  ETD_ERR_UPSTREAM_CONNECT: 'no connection could be made to a backend server',
  ETD_ERR_NO_SERVER: 'no backend server of the right address family is available',
  ETD_ERR_API: 'the management API cannot start',
  ETD_ERR_PREFLIGHT: 'a critical preflight check failed, so transparency cannot work',
  ETD_ERR_STATE: 'the state store cannot be opened or written',
  ETD_ERR_USAGE: 'a command-line argument is not valid',
  ETD_ERR_USER: 'the configured user (user:) does not exist',
  ETD_ERR_PRIVILEGE_DROP: 'etd started as root cannot switch to its user',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** An error with a stable code, a message naming the problem, and a hint naming the fix. */
export class EtdError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly errno: number | undefined;
  readonly syscall: string | undefined;

  constructor(code: ErrorCode, message: string, opts: { hint?: string; cause?: unknown; errno?: number; syscall?: string } = {}) {
    super(opts.hint ? `${message} — ${opts.hint}` : message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'EtdError';
    this.code = code;
    this.hint = opts.hint;
    this.errno = opts.errno;
    this.syscall = opts.syscall;
  }
}

export function isEtdError(e: unknown, code?: ErrorCode): e is EtdError {
  return e instanceof EtdError && (code === undefined || e.code === code);
}

/** Best-effort one-line description of anything thrown, for logs. */
export function describeError(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return typeof code === 'string' && !e.message.includes(code) ? `${code}: ${e.message}` : e.message;
  }
  return String(e);
}
