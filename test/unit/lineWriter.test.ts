// LineWriter, the log destination: every line arrives, in order, in few writes; flush and flushSync; a dead fd never throws.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LineWriter } from '../../src/log.js';

const dirs: string[] = [];
function tempFile(): { file: string; fd: number } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-linewriter-'));
  dirs.push(dir);
  const file = path.join(dir, 'out.log');
  return { file, fd: fs.openSync(file, 'w') };
}

afterEach(() => {
  vi.restoreAllMocks();
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe('LineWriter', () => {
  it('writes 10,000 lines (UTF-8 included) in order, with one write per turn or in-flight batch', async () => {
    const { file, fd } = tempFile();
    const writes = vi.spyOn(fs, 'write');
    const w = new LineWriter(fd);
    const lines = Array.from({ length: 10_000 }, (_, i) => `{"n":${i},"s":"é—${i}"}\n`);
    for (let i = 0; i < lines.length; i++) {
      w.write(lines[i] as string);
      if (i % 1000 === 999) await new Promise((r) => setTimeout(r, 2)); // ten turns
    }
    await new Promise<void>((r) => w.flush(() => r()));
    expect(fs.readFileSync(file, 'utf8')).toBe(lines.join(''));
    expect(writes.mock.calls.length).toBeGreaterThanOrEqual(1);
    expect(writes.mock.calls.length).toBeLessThanOrEqual(20); // not one per line
    fs.closeSync(fd);
  });

  it('flush calls back at once when nothing is queued, and after the write otherwise', async () => {
    const { file, fd } = tempFile();
    const w = new LineWriter(fd);
    await new Promise<void>((r) => w.flush(() => r()));
    w.write('a\n');
    await new Promise<void>((r) => w.flush(() => r()));
    expect(fs.readFileSync(file, 'utf8')).toBe('a\n');
    fs.closeSync(fd);
  });

  it('flushSync writes what is queued before the turn ends', () => {
    const { file, fd } = tempFile();
    const w = new LineWriter(fd);
    w.write('x\n');
    w.write('y\n');
    w.flushSync();
    expect(fs.readFileSync(file, 'utf8')).toBe('x\ny\n');
    fs.closeSync(fd);
  });

  it('a closed fd (stdout gone): nothing throws, lines are dropped, flush still calls back', async () => {
    const { fd } = tempFile();
    fs.closeSync(fd);
    const w = new LineWriter(fd);
    w.write('lost\n');
    await new Promise<void>((r) => w.flush(() => r()));
    w.write('lost too\n');
    expect(() => w.flushSync()).not.toThrow();
  });
});
