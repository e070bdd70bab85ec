// Debian's Chromium, headless, driven by playwright-core (no browser download): launch with a fresh profile, collect console errors, save screenshots.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { inCI } from './privileged.js';

export const CHROMIUM = '/usr/bin/chromium';

/** Where the tests' screenshots go (the README's own is written to docs/img by the test that makes it). */
export const SCREENSHOTS = path.join(__dirname, '../../test-results/dashboard');

/**
 * True when browser tests should be skipped: Chromium is not installed. Prints why; in CI
 * (which installs it, see .ci/run) it throws instead.
 */
export function skipWithoutChromium(suite: string): boolean {
  if (fs.existsSync(CHROMIUM)) return false;
  if (inCI) throw new Error(`${suite}: ${CHROMIUM} is missing in CI; .ci/run installs the chromium package`);
  console.warn(`SKIPPED ${suite}: ${CHROMIUM} is not installed (apt-get install chromium; CI runs it)`);
  return true;
}

export interface Browser {
  readonly context: BrowserContext;
  /** A new tab that records console errors and page errors into `errors`. */
  page(viewport?: { width: number; height: number }): Promise<TrackedPage>;
  close(): Promise<void>;
}

export interface TrackedPage {
  readonly page: Page;
  /** Console messages of type error and uncaught page errors, in order. */
  readonly errors: string[];
  /** Every URL the page requested. */
  readonly urls: string[];
}

/** A fresh browser (its own --user-data-dir, removed on close): no state shared between tests. */
export async function launchBrowser(): Promise<Browser> {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 800 },
      args: [
        '--headless=new',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      timeout: 60_000,
    });
  } catch (e) {
    fs.rmSync(profile, { recursive: true, force: true });
    throw e;
  }
  return {
    context,
    async page(viewport) {
      const page = await context.newPage();
      if (viewport) await page.setViewportSize(viewport);
      const errors: string[] = [];
      const urls: string[] = [];
      page.on('console', (m) => {
        if (m.type() === 'error') errors.push(`console: ${m.text()}`);
      });
      page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
      page.on('request', (r) => urls.push(r.url()));
      return { page, errors, urls };
    },
    async close() {
      await context.close().catch(() => undefined);
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page: Page, name: string, file = path.join(SCREENSHOTS, `${name}.png`)): Promise<string> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** How a table sits in its panel: its scroll box's widths, and its right edge against the card's content edge. */
export interface TableFit {
  readonly id: string;
  readonly rows: number;
  readonly scrollWidth: number;
  readonly clientWidth: number;
  readonly tableRight: number;
  readonly cardRight: number;
}

/** Every visible table of the dashboard, as it sits in its panel (a table that fits has scrollWidth ≤ clientWidth, tableRight ≤ cardRight). */
export async function tableFits(page: Page): Promise<TableFit[]> {
  return page.evaluate(() =>
    [...document.querySelectorAll<HTMLTableElement>('main .scroll > table')]
      .filter((t) => t.offsetParent !== null)
      .map((t) => {
        const box = t.closest('.scroll') as HTMLElement;
        const card = t.closest('.card') as HTMLElement;
        const cardRight = card.getBoundingClientRect().right - Number.parseFloat(getComputedStyle(card).paddingRight);
        return {
          id: t.id,
          rows: t.tBodies[0]?.rows.length ?? 0,
          scrollWidth: box.scrollWidth,
          clientWidth: box.clientWidth,
          tableRight: Math.round(t.getBoundingClientRect().right),
          cardRight: Math.round(cardRight),
        };
      }),
  );
}

/** The tables cut off at the right of their panels (none, when the layout is right). */
export async function overflowingTables(page: Page): Promise<TableFit[]> {
  return (await tableFits(page)).filter((t) => t.scrollWidth > t.clientWidth || t.tableRight > t.cardRight + 1);
}

/** The document fits its viewport's width (nothing to scroll sideways but the tables' own boxes). */
export async function fitsWidth(page: Page): Promise<boolean> {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
}
