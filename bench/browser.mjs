// The benchmark in a browser: `bench` (src/bench.ts, the same measurements and report as
// `gpt2-webgpu bench`) run inside headless Chromium, on whatever adapter its WebGPU gets: on a
// machine without a GPU that is SwiftShader (a CPU adapter); pass Chromium's own flags through
// --chromium-arg to reach a GPU (e.g. --chromium-arg=--enable-features=Vulkan on Linux).
// Builds the browser bundles, serves the repository (and a local model folder) on 127.0.0.1 with
// scripts/serve.js, and prints the report (JSON with --json).
//   node bench/browser.mjs [--model random:distilgpt2 | <folder> | <URL>] [--batch 1,4] [--prompt-tokens 16]
//     [--new-tokens 8] [--repeat 1] [--f16] [--profile <file.json>] [--no-profile] [--json]
//     [--chromium <path>] [--chromium-arg=<flag>]... [--timeout <seconds>]
// --profile: a JSON file of device-profile fields merged over the adapter's (as `gpt2-webgpu bench
// --profile`); --no-profile skips the per-kernel GPU timings.
// <folder>: a local folder holding config.json and model.safetensors (served as /model/);
// <URL>: such a folder on a server that allows this page to fetch it.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { buildBrowser } from '../scripts/build-browser.js';
import { defaultMounts, serve } from '../scripts/serve.js';
import { bool, flags, int, ints, str, UsageError } from './flags.mjs';

const USAGE =
  'usage: node bench/browser.mjs [--model random:distilgpt2|<folder>|<URL>] [--batch B[,B...]] [--prompt-tokens P] [--new-tokens N] [--repeat R] [--f16] [--profile FILE.json] [--no-profile] [--json] [--chromium PATH] [--chromium-arg=FLAG]... [--timeout S]';

function parse(argv) {
  const f = flags(argv, {
    model: str('random:distilgpt2'),
    batch: str('1'),
    'prompt-tokens': str('16'),
    'new-tokens': str('8'),
    repeat: str('1'),
    timeout: str('600'),
    f16: bool,
    'no-profile': bool,
    profile: { type: 'string' },
    json: bool,
    chromium: str(process.env.CHROMIUM_PATH ?? '/usr/lib/chromium/chromium'),
    'chromium-arg': { type: 'string', multiple: true, default: [] },
  });
  return {
    model: f.model,
    batches: ints('--batch', f.batch, 1, 1024),
    promptTokens: int('--prompt-tokens', f['prompt-tokens'], 1, 1 << 20),
    newTokens: int('--new-tokens', f['new-tokens'], 1, 1 << 20),
    repeat: int('--repeat', f.repeat, 1, 1000),
    f16: f.f16,
    profile: f.profile === undefined ? undefined : profileFile(f.profile),
    timings: !f['no-profile'],
    json: f.json,
    chromium: f.chromium,
    chromiumArgs: f['chromium-arg'],
    timeout: int('--timeout', f.timeout, 1, 86400),
  };
}

/** A --profile file: partial device-profile fields as JSON (the engine checks the fields in the page). */
function profileFile(path) {
  let text;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`--profile ${path}: cannot read it (${e.code ?? e.message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--profile ${path}: not JSON (${e.message})`);
  }
}

/** The page's model source and, for a local folder, the mount that serves it. */
function modelSource(model) {
  if (model.startsWith('random:')) return { source: model, mount: null };
  if (/^https?:\/\//.test(model)) return { source: { url: model }, mount: null };
  const dir = resolve(model);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new UsageError(`--model "${model}" is not random:<name>, an http(s) URL or a folder here`);
  }
  for (const f of ['config.json', 'model.safetensors']) {
    if (!existsSync(join(dir, f))) throw new UsageError(`--model folder ${dir} has no ${f}`);
  }
  return { source: null, mount: { prefix: '/model/', dir } };
}

async function main() {
  const o = parse(process.argv.slice(2));
  const { source, mount } = modelSource(o.model);
  if (!existsSync(o.chromium)) {
    throw new UsageError(
      `no Chromium at ${o.chromium}: install it (bash scripts/install-chromium.sh) or pass --chromium <path>`,
    );
  }
  await buildBrowser();
  const server = await serve({ port: 0, mounts: [...(mount ? [mount] : []), ...defaultMounts()] });
  const browser = await chromium.launch({
    executablePath: o.chromium,
    headless: true,
    // navigator.gpu needs --enable-unsafe-webgpu in headless Chromium; --no-sandbox for containers running as root.
    args: [
      '--enable-unsafe-webgpu',
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-component-update',
      ...o.chromiumArgs,
    ],
  });
  try {
    const page = await browser.newPage();
    const logs = [];
    page.on('console', (m) => {
      if (m.type() === 'error') logs.push(m.text());
    });
    page.on('pageerror', (e) => logs.push(`uncaught: ${e.message}`));
    page.setDefaultTimeout(o.timeout * 1000);
    await page.goto(`${server.url}/dist/browser/bench.html`);
    const opts = {
      model: source ?? { url: `${server.url}/model` },
      dtype: o.f16 ? 'f16' : 'f32',
      batches: o.batches,
      promptTokens: o.promptTokens,
      newTokens: o.newTokens,
      repeat: o.repeat,
      timings: o.timings,
      profile: o.profile,
    };
    const out = await page.evaluate(
      async ({ opts, label }) => {
        const b = await import('/dist/browser/bench.js');
        let engine;
        try {
          engine = await b.Engine.create({ gpu: navigator.gpu });
          const report = { ...(await b.runBench(engine, opts)), model: label };
          return { report, text: b.formatBench(report) };
        } catch (e) {
          return { error: `${e?.name ?? 'Error'}: ${e?.message ?? String(e)}` };
        } finally {
          engine?.destroy();
        }
      },
      { opts, label: o.model },
    );
    if (out.error) throw new Error(`in the page: ${out.error}${logs.length ? `\npage log:\n${logs.join('\n')}` : ''}`);
    const report = { ...out.report, browser: `Chromium ${browser.version()}` };
    console.log(o.json ? JSON.stringify(report) : `Chromium ${browser.version()}\n${out.text}`);
    const failed = report.results.filter((r) => 'error' in r);
    if (failed.length) process.exitCode = 1;
  } finally {
    await browser.close();
    await server.close();
  }
}

main().catch((e) => {
  console.error(
    e instanceof UsageError ? `bench/browser.mjs: ${e.message}\n${USAGE}` : `bench/browser.mjs: ${e.message}`,
  );
  process.exitCode = e instanceof UsageError ? 2 : 1;
});
