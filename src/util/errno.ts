// What an errno name means to an operator: the class of a failed connect, and what to do when a listen fails.

/** Why a connect failed, in the words of session summaries, health checks and the doctor. */
export type ConnectFailure = 'refused' | 'timeout' | 'unreachable' | 'reset' | 'no_privilege' | 'error';

/** The errno name of an error: the native addon's errors carry it in sysCode (their code is ETD_ERR_SYSCALL). */
export function errnoName(e: unknown): string | undefined {
  return (e as { sysCode?: string } | undefined)?.sysCode ?? (e as { code?: string } | undefined)?.code;
}

/** Classifies a connect error by its errno name (the one place that does). */
export function connectFailure(e: unknown): ConnectFailure {
  switch (errnoName(e)) {
    case 'ECONNREFUSED':
      return 'refused';
    case 'ETIMEDOUT':
      return 'timeout';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return 'unreachable';
    case 'ECONNRESET':
    case 'EPIPE':
      return 'reset';
    case 'EPERM':
    case 'EACCES':
      return 'no_privilege';
    default:
      return 'error';
  }
}

/** The session summary's word for a failed connect: the class, or the errno name when unclassified. */
export function connectFailureCause(e: unknown): string {
  const c = connectFailure(e);
  if (c !== 'error') return c;
  const code = errnoName(e);
  return code ? code.toLowerCase() : 'error';
}

/**
 * What the operator should do when binding `what` (a listener, the API) fails with this errno
 * name; undefined when there is nothing specific to say.
 */
export function listenHint(code: string | undefined, portKey: string): string | undefined {
  switch (code) {
    case 'EADDRINUSE':
      return `another process holds that address and port; stop it or set another ${portKey}`;
    case 'EACCES':
      return `ports below 1024 need root or CAP_NET_BIND_SERVICE; run etd under its systemd unit or use a higher ${portKey}`;
    case 'EADDRNOTAVAIL':
      return 'that address is not configured on this host; use one of its addresses, 0.0.0.0 or 127.0.0.1';
    default:
      return undefined;
  }
}
