// Bytes and outside text made readable and terminal-safe for a log line or the CLI, the way postscreen shows early talk (`EHLO x\r\n`).

/**
 * Escapes bytes for a log line the way postscreen does (`EHLO x\r\n`): printable ASCII as is,
 * CR/LF/TAB as \r \n \t, backslash doubled, anything else as \xHH. At most `max` input bytes.
 */
export function escapeBytes(buf: Uint8Array, max = 100): string {
  let out = '';
  const n = Math.min(buf.length, max);
  for (let i = 0; i < n; i++) {
    const b = buf[i] as number;
    if (b === 0x0d) out += '\\r';
    else if (b === 0x0a) out += '\\n';
    else if (b === 0x09) out += '\\t';
    else if (b === 0x5c) out += '\\\\';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return out;
}

/**
 * Text from outside (a Redis error, a backend's greeting, a DNS answer, a peer's name) made safe
 * for a terminal: C0 controls, DEL and C1 controls (which start escape sequences: ESC, CSI 0x9b,
 * OSC 0x9d) become \xHH, CR/LF/TAB \r \n \t, so a peer can neither redraw nor retitle the
 * operator's screen. Other Unicode stays readable. At most `max` characters, then "…".
 */
export function escapeText(text: string, max = 10_000): string {
  const cut = text.length > max ? `${text.slice(0, max)}…` : text;
  return cut.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => {
    if (c === '\r') return '\\r';
    if (c === '\n') return '\\n';
    if (c === '\t') return '\\t';
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}
