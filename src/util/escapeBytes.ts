// Bytes made readable for a log line, the way postscreen shows early talk (`EHLO x\r\n`).

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
