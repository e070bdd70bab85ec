// etd status and etd doctor print text that came from outside (Redis errors, backend names and greetings) with every control character escaped: a peer cannot redraw or retitle the operator's terminal.

import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatFindings } from '../../src/commands/doctor.js';
import { statusCommand } from '../../src/commands/status.js';
import { escapeText } from '../../src/util/escapeBytes.js';

// ESC [2K (erase line), CR, a fake line, OSC 0 (set the window title) ended by BEL, and C1 CSI.
const EVIL = '\x1b[2K\r\x1b[1Acluster      up: all fine\x1b]0;pwned\x07\u009b2J\x7f';
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/; // any control byte but the line breaks etd prints itself

const status = {
  version: 'test',
  uptimeSeconds: 5,
  startedAt: '2026-01-01T00:00:00Z',
  connections: { held: 0, relaying: 0, total: 0 },
  stress: { active: false, windowMs: 6000, enterAbove: 100, leaveBelow: 70 },
  listeners: [{ name: `smtp${EVIL}`, mode: 'plain', addresses: ['127.0.0.1:2525'] }],
  backends: { up: 0, total: 1 },
  cluster: {
    connected: false,
    state: 'down',
    since: '2026-01-01T00:00:00Z',
    where: 'redis://127.0.0.1:6379',
    lagMs: null,
    pendingWrites: 0,
    lastError: `ERR ${EVIL}`,
  },
  lostSessions: 0,
  workerRestarts: 0,
};
const stats = {
  accepted: 0,
  passed: 0,
  relayed: 0,
  noServer: 0,
  clientGone: 0,
  limitRejections: 0,
  limits: { max_connections: 0, max_held: 0, per_client: 0 },
  earlyTalkers: { total: 0, drop: 0, reject: 0, log: 0 },
  verdicts: {},
  bytes: { fromClient: 0, toClient: 0 },
};
const backends = {
  backends: [{ name: 'mx1', state: 'down', address: '127.0.0.1', port: 25, active: 0, lastReason: `greeting 554 ${EVIL}` }],
};

let server: http.Server;
let url: string;

describe('terminal-safe CLI output', () => {
  beforeAll(async () => {
    // A stand-in for the API of an etd whose Redis peer and backend answered with escape sequences.
    server = http.createServer((req, res) => {
      const body =
        req.url === '/v1/status'
          ? status
          : req.url === '/v1/stats'
            ? stats
            : req.url === '/v1/backends'
              ? backends
              : { error: `nothing at ${EVIL}` };
      res.writeHead(req.url === '/v1/bogus' ? 500 : 200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('etd status escapes the Redis error, names and backend reasons', async () => {
    const lines: string[] = [];
    expect(await statusCommand({ url, json: false }, (s) => lines.push(s))).toBe(0);
    const text = lines.join('\n');
    expect(text).not.toMatch(CONTROL);
    expect(text).toContain('(ERR \\x1b[2K\\r\\x1b[1Acluster      up: all fine\\x1b]0;pwned\\x07\\x9b2J\\x7f)');
    expect(text).toMatch(/^cluster {6}DOWN since/m);
    expect(text).not.toMatch(/^cluster {6}up/m);
    expect(text).toContain('greeting 554 \\x1b[2K');
  });

  it('etd status --json leaves no raw C0 or C1 character either', async () => {
    const lines: string[] = [];
    expect(await statusCommand({ url, json: true }, (s) => lines.push(s))).toBe(0);
    expect(lines.join('\n')).not.toMatch(CONTROL);
    expect((JSON.parse(lines.join('\n')) as { status: typeof status }).status.cluster.lastError).toBe(`ERR ${EVIL}`);
  });

  it('etd doctor escapes the findings (a greeting or DNS answer quoted in a detail)', () => {
    const lines = formatFindings([
      { id: 'return.mx1', status: 'FAIL', what: `mx1 ${EVIL}`, detail: `answered ${EVIL}`, fix: `ip route ${EVIL}`, critical: false },
    ]);
    expect(lines.join('\n')).not.toMatch(CONTROL);
    expect(lines[1]).toContain('answered \\x1b[2K\\r');
  });

  it('escapeText: C0, DEL and C1 escaped; other Unicode kept; bounded', () => {
    expect(escapeText('a\x00b\x1bc\x7fd\u0085e\u009bf')).toBe('a\\x00b\\x1bc\\x7fd\\x85e\\x9bf');
    expect(escapeText('grüße — ok\t\n')).toBe('grüße — ok\\t\\n');
    expect(escapeText('x'.repeat(20), 5)).toBe('xxxxx…');
  });
});
