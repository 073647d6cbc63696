/**
 * Node-side helpers for the real-browser test: Debian's Chromium driven by playwright-core, the
 * repo served by scripts/serve.js on 127.0.0.1, the browser bundles built by scripts/build-browser.js.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import type {} from '../examples/browser/main.js'; // window.gpt2example

/** Debian's chromium package puts the real binary here (/usr/bin/chromium is a wrapper script). */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/lib/chromium/chromium';
/** The Chromium major version these tests were written against (Debian 12 bookworm-security). */
export const CHROMIUM_MAJOR = 156;
export const IN_CI = process.env.CI === 'true' || process.env.CI === '1';

/** The repository root: the nearest folder above this file holding package.json (works from dist/test). */
export const REPO_ROOT = (() => {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, 'package.json'))) {
    const up = dirname(d);
    if (up === d) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    d = up;
  }
  return d;
})();

/** Folder holding hf-gpt2-tiny/ (served at /fixtures/ by scripts/serve.js), or null. */
export function fixturesDir(): string | null {
  // GPT2_FIXTURES, when set, is the only place looked at (as test/fixtures-util.ts does).
  const c = process.env.GPT2_FIXTURES
    ? [process.env.GPT2_FIXTURES]
    : [join(REPO_ROOT, 'fixtures'), join(REPO_ROOT, '..', 'shared', 'fixtures')];
  return c.find((d) => existsSync(join(d, 'hf-gpt2-tiny', 'reference.json'))) ?? null;
}

/** Runs scripts/build-browser.js (esbuild, well under a second); throws with its output on failure. */
export function buildBrowserBundles(): void {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'build-browser.js')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`scripts/build-browser.js failed (status ${r.status}):\n${r.stdout}${r.stderr}`);
}

export interface Server {
  url: string;
  close(): Promise<void>;
}

/** Starts scripts/serve.js in this process on 127.0.0.1, a free port. */
export async function startServer(): Promise<Server> {
  // A plain JS module outside the TS project: imported by URL at run time.
  const mod = (await import(pathToFileURL(join(REPO_ROOT, 'scripts', 'serve.js')).href)) as {
    serve(o: { port: number; mounts?: Array<{ prefix: string; dir: string }> }): Promise<Server>;
    defaultMounts(): Array<{ prefix: string; dir: string }>;
  };
  const fx = fixturesDir();
  const mounts = mod.defaultMounts().filter((m) => m.prefix !== '/fixtures/');
  if (fx) mounts.unshift({ prefix: '/fixtures/', dir: fx });
  return mod.serve({ port: 0, mounts });
}

export interface Browser {
  context: BrowserContext;
  version: string;
  /** Opens a page whose console errors and uncaught exceptions are collected in `errors`. */
  page(): Promise<{ page: Page; errors: string[] }>;
  close(): Promise<void>;
}

/** Launches headless Chromium with WebGPU on a fresh profile (deleted on close). */
export async function launchBrowser(): Promise<Browser> {
  const userDataDir = mkdtempSync(join(tmpdir(), 'gpt2-webgpu-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: [
        '--enable-unsafe-webgpu', // headless Chromium exposes navigator.gpu only with this
        '--no-sandbox', // containers running as root
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--disable-quic',
      ],
    });
  } catch (e) {
    rmSync(userDataDir, { recursive: true, force: true });
    throw e;
  }
  const version = context.browser()?.version() ?? '';
  return {
    context,
    version,
    async page() {
      const page = await context.newPage();
      const errors: string[] = [];
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') errors.push(`console.${m.type()}: ${m.text()}`);
      });
      page.on('pageerror', (e) => errors.push(`uncaught: ${e.message}`));
      page.on('crash', () => errors.push('the page crashed'));
      return { page, errors };
    },
    async close() {
      await context.close().catch(() => undefined);
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Appends what the page logged, for failure messages. */
export function withLog(message: string, errors: readonly string[]): string {
  return errors.length
    ? `${message}\npage console errors:\n  ${errors.join('\n  ')}`
    : `${message}\n(no page console errors)`;
}

export interface ExampleResult {
  tokens: number[];
  text: string;
  seed: number;
  adapter: {
    description: string;
    isFallbackAdapter: boolean;
    vendor: string;
    architecture: string;
    limits: Record<string, number>;
  };
  cache: string;
}

export interface ExamplePage {
  page: Page;
  errors: string[];
  /** The run the URL asked for. */
  first: ExampleResult;
  /** Runs again on the same page (window.gpt2example.run), reusing the loaded model. */
  run(params: Record<string, string | number>): Promise<ExampleResult>;
  close(): Promise<void>;
}

/** Reads #result after a run: throws with the page's error and console log, else parses it. */
async function readResult(page: Page, errors: readonly string[]): Promise<ExampleResult> {
  const ds = await page.evaluate(() => {
    const r = document.getElementById('result')!;
    return { error: r.dataset.error, adapter: r.dataset.adapter, cache: r.dataset.cache, text: r.textContent ?? '' };
  });
  if (ds.error !== undefined) throw new Error(withLog(`example page reported an error: ${ds.error}`, errors));
  const out = JSON.parse(ds.text) as { tokens: number[]; text: string; seed: number };
  return { ...out, adapter: JSON.parse(ds.adapter ?? '{}') as ExampleResult['adapter'], cache: ds.cache ?? '' };
}

/**
 * Opens the example page in URL mode (`/examples/browser/?<params>`), waits for #result to get
 * data-done or data-error, and returns the page with the parsed result; throws with the page's
 * error and console log. Close the returned page when done.
 */
export async function openExample(
  b: Browser,
  server: Server,
  params: Record<string, string | number>,
  timeoutMs = 60000,
): Promise<ExamplePage> {
  const { page, errors } = await b.page();
  const waitDone = async (): Promise<void> => {
    try {
      await page.waitForFunction(
        () => {
          const r = document.getElementById('result');
          return !!r && (r.dataset.done === '1' || r.dataset.error !== undefined);
        },
        undefined,
        { timeout: timeoutMs },
      );
    } catch (e) {
      throw new Error(
        withLog(
          `example page did not finish in ${timeoutMs} ms (${(e as Error).message.split('\n')[0]}); status: ${await page.textContent('#status').catch(() => '?')}`,
          errors,
        ),
        { cause: e },
      );
    }
  };
  try {
    const q = new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)]));
    await page.goto(`${server.url}/examples/browser/?${q}`);
    await waitDone();
    const first = await readResult(page, errors);
    return {
      page,
      errors,
      first,
      async run(more) {
        // Errors land in #result's data-error as well; readResult reports them with the console log.
        await page.evaluate((p) => window.gpt2example.run(p).catch(() => undefined), more);
        await waitDone();
        return readResult(page, errors);
      },
      close: () => page.close(),
    };
  } catch (e) {
    await page.close();
    throw e;
  }
}

export interface AdapterKind {
  vendor: string;
  architecture: string;
  description: string;
}

/** "vendor/architecture (description)", for titles and messages. */
export function adapterName(a: AdapterKind): string {
  return `${a.vendor || '?'}/${a.architecture || '?'}${a.description ? ` (${a.description})` : ''}`;
}

/** Same implementation (vendor and architecture): then seeded runs must agree token for token. */
export function sameAdapterKind(a: AdapterKind, b: AdapterKind): boolean {
  return a.vendor === b.vendor && a.architecture === b.architecture;
}
