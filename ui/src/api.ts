// The dashboard's one way to the management API: same origin, the token (kept in sessionStorage for this browser session) in the Authorization header, never in a URL.

const KEY = 'etd.token';

export class AuthError extends Error {
  constructor(readonly hadToken: boolean) {
    super(hadToken ? 'the API refused this token' : 'this API needs a token');
  }
}

/** An API answer that was not 2xx: the API's own reason ({"error": "..."}) as the message. */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export const token = {
  get: (): string | null => sessionStorage.getItem(KEY),
  set: (t: string): void => sessionStorage.setItem(KEY, t),
  clear: (): void => sessionStorage.removeItem(KEY),
};

let onAuthFailure: (e: AuthError) => void = () => undefined;

/** Called once whenever a request is refused for its token (the page then shows the prompt). */
export function whenUnauthorized(fn: (e: AuthError) => void): void {
  onAuthFailure = fn;
}

export function headers(extra: Record<string, string> = {}): Record<string, string> {
  const t = token.get();
  return t ? { ...extra, authorization: `Bearer ${t}` } : extra;
}

async function reason(res: Response): Promise<string> {
  const text = await res.text();
  try {
    const body = JSON.parse(text) as { error?: unknown };
    if (typeof body.error === 'string') return body.error;
  } catch {
    // not JSON
  }
  return `${res.status} ${res.statusText}`;
}

/** Throws AuthError on 401 (after telling the page), ApiFailure with the API's reason on other errors. */
export async function call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: headers(
      body === undefined ? { accept: 'application/json' } : { accept: 'application/json', 'content-type': 'application/json' },
    ),
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    cache: 'no-store',
    ...(signal ? { signal } : {}),
  });
  if (res.status === 401) {
    const e = new AuthError(token.get() !== null);
    onAuthFailure(e);
    throw e;
  }
  if (!res.ok) throw new ApiFailure(res.status, await reason(res));
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const get = <T>(path: string, signal?: AbortSignal) => call<T>('GET', path, undefined, signal);
