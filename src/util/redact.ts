// URL secrets hidden by parsing the URL (WHATWG), never by a pattern: the one redaction of passwords in URLs for logs, status, `etd check` and the API.

/**
 * The userinfo of a URL holds a raw "@" (`redis://user:p@ss@host`): WHATWG URL takes the last "@"
 * as the end of the userinfo, a reader (or a regex) the first, so what is secret is ambiguous.
 * The config refuses such a URL and says to write %40.
 */
export function rawAtInUserinfo(text: string): boolean {
  const start = text.indexOf('//');
  if (start < 0) return false;
  const rest = text.slice(start + 2);
  const end = rest.search(/[/?#]/);
  const authority = end < 0 ? rest : rest.slice(0, end);
  return authority.split('@').length > 2;
}

/**
 * The URL with its password (and only it) replaced by `<redacted>`; the user name stays, it helps
 * to diagnose. A string that does not parse as a URL keeps nothing between "//" and its last "@"
 * before the path, so no part of a secret survives a typo.
 */
export function redactUrl(text: string): string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    const start = text.indexOf('//');
    if (start < 0) return text;
    const rest = text.slice(start + 2);
    const end = rest.search(/[/?#]/);
    const authority = end < 0 ? rest : rest.slice(0, end);
    const at = authority.lastIndexOf('@');
    return at < 0 ? text : `${text.slice(0, start + 2)}<credentials>${rest.slice(at)}`;
  }
  if (u.password === '' && u.username === '') return text;
  // Rebuilt from the parts: the URL setters would percent-encode "<redacted>".
  const user = u.username === '' ? '' : u.username;
  const secret = u.password === '' ? '' : ':<redacted>';
  const hostPart = u.host === '' ? '' : u.host;
  return `${u.protocol}//${user}${secret}@${hostPart}${u.pathname}${u.search}${u.hash}`;
}

/** The URL without any credentials (user name and password): where something connects, for a status line. */
export function urlWithoutCredentials(text: string): string {
  try {
    const u = new URL(text);
    return `${u.protocol}//${u.host}${u.pathname}${u.search}`;
  } catch {
    return redactUrl(text).replace('<credentials>@', '');
  }
}
