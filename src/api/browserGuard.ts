// Pure: whether a request's Host, Origin and Sec-Fetch-Site show a browser being used against the API (DNS rebinding, cross-site requests), and the reason when they do.
//
// A web page cannot send the bearer token (that needs a CORS preflight the API never grants),
// but without a token a page on any site could, through a browser on the gateway, POST to
// http://127.0.0.1:8025 (form, no-cors fetch) or rebind its own name to 127.0.0.1 and then read
// and write everything. The Host check closes rebinding (the browser sends the attacker's name);
// the Origin and Sec-Fetch-Site checks close cross-site writes. Non-browser clients (etd status,
// curl, health checkers) send no Origin and a Host naming the address they dialled.

import net from 'node:net';

/** Where the connection arrived: the socket's local address and port (undefined for a unix socket). */
export interface ListenerSide {
  readonly address: string | undefined;
  readonly port: number | undefined;
}

export type GuardVerdict = { readonly ok: true } | { readonly ok: false; readonly status: 403 | 421; readonly reason: string };

const OK: GuardVerdict = { ok: true };

/** Methods that change nothing (and that a browser sends cross-site without asking anyone). */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** `::ffff:127.0.0.1` (an IPv4 client on a dual-stack socket) is 127.0.0.1. */
function plainAddress(a: string): string {
  const lower = a.toLowerCase();
  return lower.startsWith('::ffff:') && lower.includes('.') ? lower.slice(7) : lower;
}

/** A Host value (`name`, `name:port`, `[v6]:port`) as WHATWG URL parses it; undefined when it is not one. */
function parseHost(host: string): { hostname: string; port: number | undefined } | undefined {
  if (host.length === 0 || host.length > 255 || /[\s/?#@\\]/.test(host)) return undefined;
  try {
    const u = new URL(`http://${host}`);
    return { hostname: u.hostname.replace(/^\[|\]$/g, '').toLowerCase(), port: u.port === '' ? undefined : Number(u.port) };
  } catch {
    return undefined;
  }
}

/**
 * The names a Host may carry for any listener: an IP address literal or `localhost`, on any port.
 * DNS rebinding needs a name the attacker controls, so neither can be forged by it; and an SSH
 * tunnel or a port forward changes both the address and the port a browser uses (the dashboard
 * through `ssh -L 9000:10.0.0.1:8025` is Host localhost:9000). Everything else is a name, and a
 * name must be in api.allowedHosts.
 */
function namesListener(h: { hostname: string; port: number | undefined }, side: ListenerSide): boolean {
  if (side.address === undefined) return true;
  return h.hostname === 'localhost' || net.isIP(h.hostname) !== 0;
}

/**
 * An entry of api.allowedHosts: `name` matches that name on any port (a reverse proxy's public
 * name), `name:port` only that port.
 */
function inAllowed(h: { hostname: string; port: number | undefined }, allowed: readonly string[]): boolean {
  for (const entry of allowed) {
    const a = parseHost(entry);
    if (a === undefined || a.hostname !== h.hostname) continue;
    if (a.port === undefined || a.port === h.port) return true;
  }
  return false;
}

/** The Host header check: refuses names other than the listener's own (DNS rebinding). No Host at all (HTTP/1.0 probes) passes: browsers always send one. */
export function checkHost(hostHeader: string | undefined, side: ListenerSide, allowedHosts: readonly string[]): GuardVerdict {
  if (side.address === undefined || hostHeader === undefined) return OK;
  const h = parseHost(hostHeader);
  if (h === undefined) return { ok: false, status: 421, reason: `the Host header "${show(hostHeader)}" is not a host name or address` };
  if (namesListener(h, side) || inAllowed(h, allowedHosts)) return OK;
  return {
    ok: false,
    status: 421,
    reason:
      `the Host header "${show(hostHeader)}" does not name this API (${hostOf(side)}); a browser sends a foreign name after DNS rebinding. ` +
      'Use the address the API listens on, or add the name to api.allowedHosts (e.g. the name of a reverse proxy in front of it)',
  };
}

/**
 * The Origin / Sec-Fetch-Site check of a state-changing request: a browser names the page that
 * made it, and only the API's own page (or an allowed host's) may change anything. No Origin
 * (CLI, curl) passes.
 */
export function checkOrigin(
  method: string,
  hostHeader: string | undefined,
  origin: string | undefined,
  fetchSite: string | undefined,
  side: ListenerSide,
  allowedHosts: readonly string[],
): GuardVerdict {
  if (SAFE_METHODS.has(method.toUpperCase())) return OK;
  // same-site is another port or subdomain of the same site: not this API's own page either.
  if (fetchSite !== undefined && (fetchSite === 'cross-site' || fetchSite === 'same-site')) {
    return {
      ok: false,
      status: 403,
      reason: `a ${method} from another site's page is refused (Sec-Fetch-Site: ${show(fetchSite)}); change etd from its own dashboard, etd's CLI or curl`,
    };
  }
  if (origin === undefined) return OK;
  const refused: GuardVerdict = {
    ok: false,
    status: 403,
    reason: `a ${method} from the page of origin "${show(origin)}" is refused: only the API's own origin (${hostOf(side)}) or an api.allowedHosts name may change etd`,
  };
  let u: URL;
  try {
    u = new URL(origin);
  } catch {
    return refused;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return refused;
  const h = { hostname: u.hostname.replace(/^\[|\]$/g, '').toLowerCase(), port: u.port === '' ? undefined : Number(u.port) };
  // The page's own origin: http, the name the browser used for the API (the Host, checked
  // before this) and the same port — another port of 127.0.0.1 is another origin. Without a Host
  // the listener's own port. On a unix socket only a reverse proxy forwards browsers, and its
  // name is in allowedHosts.
  if (side.address !== undefined && u.protocol === 'http:' && namesListener(h, side)) {
    const host = hostHeader === undefined ? undefined : parseHost(hostHeader);
    const want = host === undefined ? side.port : (host.port ?? 80);
    if ((h.port ?? 80) === want && (host === undefined || host.hostname === h.hostname || namesListener(host, side))) return OK;
  }
  // An allowed host is typically a reverse proxy terminating TLS: https is its own origin too.
  if (inAllowed(h, allowedHosts)) return OK;
  return refused;
}

function hostOf(side: ListenerSide): string {
  if (side.address === undefined) return 'a unix socket';
  const a = plainAddress(side.address);
  return `${a.includes(':') ? `[${a}]` : a}:${side.port}`;
}

/** A header value for an error message: bounded, control characters escaped. */
function show(v: string): string {
  const cut = v.length > 100 ? `${v.slice(0, 100)}…` : v;
  return cut.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
