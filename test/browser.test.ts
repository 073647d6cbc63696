/**
 * The engine in a real browser: Debian's Chromium (headless, WebGPU on SwiftShader) loads the
 * esbuild bundles from scripts/serve.js. Proves the bundle runs without Node built-ins and that the
 * kernels work within a browser adapter's limits (256 invocations per workgroup, 10 storage buffers
 * per stage, no shader-f16), which lavapipe in the Node tests does not impose.
 *
 * Needs /usr/lib/chromium/chromium (bash scripts/install-chromium.sh). Outside CI a missing Chromium
 * skips this file; with CI=true it fails.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { AdapterSummary } from '../src/gpu/device.js';
import { gpt2Tokenizer } from '../src/index.js';
import { createEngine, type Model } from '../src/node.js';
import { compare, Rng } from './helpers.js';
import { layerNorm64 } from './reference/layernorm.js';
import {
  adapterName,
  Browser,
  buildBrowserBundles,
  CHROMIUM_MAJOR,
  CHROMIUM_PATH,
  fixturesDir,
  IN_CI,
  launchBrowser,
  REPO_ROOT,
  openExample,
  sameAdapterKind,
  Server,
  startServer,
  withLog,
} from './browser-util.js';

let browser: Browser;
let server: Server;
let started: Promise<void> | undefined;

/**
 * Builds the bundles, serves the repo and launches Chromium once; every test awaits it, so a failure
 * here fails each test with its message (uvu 0.5 swallows errors thrown in test.before).
 */
function setup(): Promise<void> {
  started ??= (async () => {
    if (!present)
      throw new Error(
        `CI=true but Chromium is missing at ${CHROMIUM_PATH}; scripts/setup.sh should have run scripts/install-chromium.sh`,
      );
    buildBrowserBundles();
    server = await startServer();
    browser = await launchBrowser();
  })();
  return started;
}

const present = existsSync(CHROMIUM_PATH);

// scripts/serve.js on its own (no browser needed): what the example's downloads rely on.
test('serve.js: GET, HEAD, Range (206, suffix, 416), MIME, and no escape from the served folders', async () => {
  const srv = await startServer();
  try {
    const file = readFileSync(join(REPO_ROOT, 'package.json'));
    const full = await fetch(`${srv.url}/package.json`);
    assert.is(full.status, 200);
    assert.is(full.headers.get('content-type'), 'application/json; charset=utf-8');
    assert.is(full.headers.get('accept-ranges'), 'bytes');
    assert.ok(Buffer.from(await full.arrayBuffer()).equals(file), 'GET returns the file');

    const head = await fetch(`${srv.url}/package.json`, { method: 'HEAD' });
    assert.is(head.status, 200);
    assert.is(head.headers.get('content-length'), String(file.length));
    assert.is((await head.arrayBuffer()).byteLength, 0, 'HEAD has no body');

    const part = await fetch(`${srv.url}/package.json`, { headers: { Range: 'bytes=3-10' } });
    assert.is(part.status, 206);
    assert.is(part.headers.get('content-range'), `bytes 3-10/${file.length}`);
    assert.ok(
      Buffer.from(await part.arrayBuffer()).equals(file.subarray(3, 11)),
      'bytes=3-10 is 8 bytes from offset 3',
    );

    const tail = await fetch(`${srv.url}/package.json`, { headers: { Range: 'bytes=-5' } });
    assert.is(tail.status, 206);
    assert.ok(
      Buffer.from(await tail.arrayBuffer()).equals(file.subarray(file.length - 5)),
      'bytes=-5 is the last 5 bytes',
    );

    const past = await fetch(`${srv.url}/package.json`, { headers: { Range: `bytes=${file.length}-` } });
    assert.is(past.status, 416);
    assert.is(past.headers.get('content-range'), `bytes */${file.length}`);

    for (const bad of ['/%2e%2e/%2e%2e/etc/passwd', '/.git', '/src/..%2f..%2fetc/passwd', '/no-such-file']) {
      assert.is((await fetch(srv.url + bad)).status, 404, `${bad} must not be served`);
    }
    const dir = await fetch(`${srv.url}/examples/browser`, { redirect: 'manual' });
    assert.is(dir.status, 301);
    assert.is(dir.headers.get('location'), '/examples/browser/');
    const page = await fetch(`${srv.url}/examples/browser/`);
    assert.is(page.headers.get('content-type'), 'text/html; charset=utf-8');
  } finally {
    await srv.close();
  }
});

if (!present && !IN_CI) {
  console.warn(
    `browser.test: skipped, no Chromium at ${CHROMIUM_PATH} (install it with: bash scripts/install-chromium.sh)`,
  );
  test.skip(`Chromium ${CHROMIUM_MAJOR} at ${CHROMIUM_PATH} (not installed: bash scripts/install-chromium.sh)`, () =>
    undefined);
} else {
  test.after(async () => {
    await browser?.close();
    await server?.close();
  });

  test(`Chromium is major version ${CHROMIUM_MAJOR}`, async () => {
    await setup();
    const major = Number(browser.version.split('.')[0]);
    assert.is(
      major,
      CHROMIUM_MAJOR,
      `expected Chromium ${CHROMIUM_MAJOR}.x, launched ${browser.version} from ${CHROMIUM_PATH}; update CHROMIUM_MAJOR in test/browser-util.ts after checking this file passes`,
    );
  });

  test('the library bundle creates a context on SwiftShader with the browser limits', async () => {
    await setup();
    const { page, errors } = await browser.page();
    try {
      await page.goto(`${server.url}/dist/browser/test-page.html`);
      // The library bundle itself (not the test page's copy of the sources) is imported here.
      const a = await page.evaluate(async () => {
        const lib = (await import('/dist/browser/gpt2-webgpu.js' as string)) as typeof import('../src/index.js');
        const ctx = await lib.createContext(navigator.gpu);
        const out = { adapter: ctx.adapter, shaderF16: ctx.features.shaderF16 };
        ctx.destroy();
        return out;
      });
      const s: AdapterSummary = a.adapter;
      const msg = withLog(`adapter: ${JSON.stringify(s)}`, errors);
      assert.is(s.architecture, 'swiftshader', msg);
      assert.is(s.isFallbackAdapter, true, msg);
      assert.is(s.limits.maxComputeInvocationsPerWorkgroup, 256, msg);
      assert.is(s.limits.maxComputeWorkgroupStorageSize, 32768, msg);
      assert.is(s.limits.maxStorageBuffersPerShaderStage, 10, msg);
      assert.is(s.limits.maxBufferSize, 1 << 30, msg);
      assert.is(a.shaderF16, false, msg);
    } finally {
      await page.close();
    }
  });

  // Rows of widths below, at and above the 256-thread workgroup; a large |mean| for the two-pass variance.
  const LN_SHAPES: Array<[number, number, number]> = [
    [1, 64, 0],
    [3, 768, 0],
    [5, 33, 0],
    [2, 1600, 5],
  ];
  test('layer norm on SwiftShader matches float64', async () => {
    await setup();
    const { page, errors } = await browser.page();
    try {
      await page.goto(`${server.url}/dist/browser/test-page.html`);
      await page.waitForFunction(() => document.documentElement.dataset.ready === '1');
      // One 256-thread workgroup per row (the browsers' invocation limit).
      for (const [rows, C, mean] of LN_SHAPES) {
        const rng = new Rng(rows * 1000 + C);
        const x = rng.normals(rows * C, 2, mean);
        const g = rng.normals(C, 0.5, 1);
        const b = rng.normals(C, 0.2);
        const out = await page.evaluate(([rows, C, x, g, b]) => window.gpt2test.layerNorm(rows, C, x, g, b, 1e-5), [
          rows,
          C,
          Array.from(x),
          Array.from(g),
          Array.from(b),
        ] as const);
        assert.is(out.wg, 256, withLog(`layer norm workgroup width on SwiftShader`, errors));
        const r = compare(out.y, layerNorm64(x, g, b, rows, C, 1e-5), { rel: 1e-5, atol: 1e-4 });
        assert.ok(r.ok, withLog(`layernorm [${rows}, ${C}] mean ${mean} in Chromium: ${r.message}`, errors));
      }
    } finally {
      await page.close();
    }
  });
}

// ---- The engine end to end in Chromium, on the hf-gpt2-tiny fixture (transformers' outputs). ----

interface RefPrompt {
  text: string;
  ids: number[];
  greedy48: number[];
}
const FIXTURES = fixturesDir();
const MODEL_URL = '/fixtures/hf-gpt2-tiny/';
const PROMPTS: RefPrompt[] = FIXTURES
  ? (JSON.parse(readFileSync(join(FIXTURES, 'hf-gpt2-tiny', 'reference.json'), 'utf8')) as { prompts: RefPrompt[] })
      .prompts
  : [];
// Sampled runs: every processor on, a fixed seed; another seed must give other tokens.
const SAMPLED = { temperature: 0.8, top_k: 40, top_p: 0.95, max_new_tokens: 16 };
const SEED = 1234;
// Prompts checked against greedy48 (48 decode steps each, ~0.2 s a step on SwiftShader here).
const GREEDY_PROMPTS = 2;

// The Node engine (Dawn on this machine's adapter, lavapipe without a GPU) for the seeded cross-check.
const nodeEngine = await createEngine();
const NODE_ADAPTER = nodeEngine.ctx.adapter;
let nodeModel: Promise<Model> | undefined;
async function nodeTokens(ids: number[], seed: number): Promise<number[]> {
  nodeModel ??= nodeEngine.loadModel(join(FIXTURES!, 'hf-gpt2-tiny'), { dtype: 'f32' });
  const res = await (
    await nodeModel
  ).generate(ids, {
    maxNewTokens: SAMPLED.max_new_tokens,
    temperature: SAMPLED.temperature,
    topK: SAMPLED.top_k,
    topP: SAMPLED.top_p,
    seed,
  });
  return res.sequences[0]!.tokens;
}
// Greedy tokens in Node with the workgroup attention kernels only (lanes off: no 'pairs', no
// 'blocks', no 'subgroup'), an oracle independent of the kernels a CPU adapter runs for prompts.
let nodeModelNoLanes: Promise<Model> | undefined;
async function nodeGreedy(ids: number[], maxNewTokens: number): Promise<number[]> {
  nodeModelNoLanes ??= nodeEngine.loadModel(join(FIXTURES!, 'hf-gpt2-tiny'), {
    dtype: 'f32',
    experimental: { profile: { attention: { decode: 'query', prompt: 'query' } } },
  });
  return (await (await nodeModelNoLanes).generate(ids, { maxNewTokens, temperature: 0 })).sequences[0]!.tokens;
}

if (present || IN_CI) {
  if (!FIXTURES && !IN_CI) {
    test.skip(`greedy48 and seeded runs in Chromium (no hf-gpt2-tiny fixture: set GPT2_FIXTURES or provide ../shared/fixtures)`, () =>
      undefined);
  } else if (!FIXTURES) {
    test('the hf-gpt2-tiny fixture is present (CI clones have ../shared/fixtures)', () => {
      assert.unreachable(
        `no hf-gpt2-tiny/reference.json under $GPT2_FIXTURES, <repo>/fixtures or <repo>/../shared/fixtures`,
      );
    });
  } else {
    // Page loads are the slow part on SwiftShader (building the pipelines): the greedy prompts share
    // one page (later ones through window.gpt2example.run), the seeded runs a second one, which
    // also proves the reload reads the weights from Cache Storage.
    test(`greedy (temperature 0, 48 tokens) in Chromium equals transformers' greedy48 for ${GREEDY_PROMPTS} prompts; after an 80-token prompt (the subgroup attention) Node's with the workgroup kernels; q8 weights Node's q8 tokens`, async () => {
      await setup();
      const greedy = (p: RefPrompt) => ({
        model: MODEL_URL,
        ids: p.ids.join(','),
        temperature: 0,
        max_new_tokens: 48,
        dtype: 'f32',
      });
      const ex = await openExample(browser, server, greedy(PROMPTS[0]!));
      try {
        assert.is(ex.first.cache, 'miss', 'a fresh profile downloads the weights');
        for (const [i, p] of PROMPTS.slice(0, GREEDY_PROMPTS).entries()) {
          const r = i === 0 ? ex.first : await ex.run(greedy(p));
          const where = `prompt ${i} "${p.text}" on ${adapterName(r.adapter)}`;
          assert.equal(r.tokens, p.greedy48.slice(p.ids.length), withLog(`greedy tokens for ${where}`, ex.errors));
          assert.is(r.text, gpt2Tokenizer.decode(r.tokens), `the text is the decoded tokens (${where})`);
        }
        // An 80-token prompt: on CPU adapters (SwiftShader, lavapipe) prompts take the subgroup
        // attention (prefill_sg; 'blocks' from 64 tokens on without subgroups); greedy tokens equal
        // Node's with the workgroup kernels.
        const p0 = PROMPTS[0]!;
        const long = PROMPTS.flatMap((p) => p.ids);
        while (long.length < 80) long.push(...long);
        const ids80 = long.slice(0, 80);
        const r = await ex.run({
          model: MODEL_URL,
          ids: ids80.join(','),
          temperature: 0,
          max_new_tokens: 8,
          dtype: 'f32',
        });
        assert.equal(
          r.tokens,
          await nodeGreedy(ids80, 8),
          withLog(`greedy tokens after an 80-token prompt on ${adapterName(r.adapter)}`, ex.errors),
        );
        // q8 weights in the page (quantized at load there) give Node's q8 greedy tokens.
        const q8 = await ex.run({
          model: MODEL_URL,
          ids: p0.ids.join(','),
          temperature: 0,
          max_new_tokens: 16,
          dtype: 'q8',
        });
        const nodeQ8 = await nodeEngine.loadModel(join(FIXTURES!, 'hf-gpt2-tiny'), { dtype: 'q8' });
        try {
          const want = (await nodeQ8.generate(p0.ids, { maxNewTokens: 16, temperature: 0 })).sequences[0]!.tokens;
          const f32 = p0.greedy48.slice(p0.ids.length, p0.ids.length + 16);
          assert.not.equal(want, f32, 'q8 leaves the f32 greedy path here, so the check tells them apart');
          assert.equal(q8.tokens, want, withLog(`q8 greedy tokens on ${adapterName(q8.adapter)}`, ex.errors));
        } finally {
          nodeQ8.destroy();
        }
        // GPT2_SCREENSHOT=file.png keeps a picture of the page after a run (for looking at the layout).
        if (process.env.GPT2_SCREENSHOT)
          await ex.page.screenshot({ path: process.env.GPT2_SCREENSHOT, fullPage: true });
        // A failed load names the file and the HTTP status, or the empty field, and clears the last run's figures.
        const failed = async (model: string) => {
          await ex.page.evaluate((m) => window.gpt2example.run({ model: m, ids: '1' }).catch(() => undefined), model);
          return ex.page.evaluate(() => ({
            error: document.getElementById('result')!.dataset.error ?? '',
            status: document.getElementById('status')!.textContent ?? '',
            stats: document.getElementById('stats')!.textContent ?? '',
          }));
        };
        const missing = await failed('/no-such-model/');
        assert.match(
          missing.error,
          /^ModelLoadError: GET http:\/\/127\.0\.0\.1:\d+\/no-such-model\/(config\.json|model\.safetensors) failed: HTTP 404/,
        );
        assert.is(missing.status, missing.error, 'the page shows the error');
        assert.is(missing.stats, '', "a failed run shows no figures (the previous run's are cleared)");
        const empty = await failed('');
        assert.match(
          empty.error,
          /^ModelLoadError: enter the base URL of a folder holding config\.json and model\.safetensors$/,
        );
      } finally {
        await ex.close();
      }
    });

    test(`seeded sampling (seed ${SEED}, T ${SAMPLED.temperature}, top-k ${SAMPLED.top_k}, top-p ${SAMPLED.top_p}): Chromium equals Node on ${adapterName(NODE_ADAPTER)} if the adapter kinds match, else repeats itself`, async () => {
      await setup();
      const p = PROMPTS[1]!;
      const params = { model: MODEL_URL, ids: p.ids.join(','), ...SAMPLED, dtype: 'f32' };
      const ex = await openExample(browser, server, { ...params, seed: SEED });
      try {
        const a = ex.first;
        assert.is(a.cache, 'hit', 'a reload reads the weights from Cache Storage');
        const b = await ex.run({ ...params, seed: SEED });
        const other = await ex.run({ ...params, seed: SEED + 1 });
        const node = await nodeTokens(p.ids, SEED);
        const where = `Chromium on ${adapterName(a.adapter)}, Node on ${adapterName(NODE_ADAPTER)}`;
        assert.is(a.seed, SEED, 'the page used the seed it was given');
        assert.is(a.tokens.length, SAMPLED.max_new_tokens);
        assert.not.equal(
          a.tokens,
          p.greedy48.slice(p.ids.length, p.ids.length + SAMPLED.max_new_tokens),
          'sampling at T 0.8 must leave the greedy path',
        );
        assert.not.equal(other.tokens, a.tokens, `seed ${SEED + 1} must give other tokens than seed ${SEED}`);
        if (sameAdapterKind(a.adapter, NODE_ADAPTER)) {
          assert.equal(a.tokens, node, `same adapter kind (${where}): the seeded tokens must be identical`);
        } else {
          // Different adapters round differently, so a near-tie may fall the other way: require
          // only that each side is deterministic for the seed.
          assert.equal(
            b.tokens,
            a.tokens,
            withLog(
              `${where} are different adapters; Chromium must give the same tokens for seed ${SEED} twice`,
              ex.errors,
            ),
          );
          assert.equal(
            await nodeTokens(p.ids, SEED),
            node,
            `${where}: Node must give the same tokens for seed ${SEED} twice`,
          );
        }
      } finally {
        await ex.close();
      }
    });
  }
}

// bench/browser.mjs: the benchmark run inside Chromium, here on the tiny fixture (a local folder it
// serves itself). Its own browser and server, so it needs only Chromium and the fixture.
if ((present || IN_CI) && FIXTURES) {
  test('bench/browser.mjs: the benchmark in Chromium reports every field, the adapter and the subgroup GEMM of a 9-token prompt; bad flags exit 2', () => {
    const script = join(REPO_ROOT, 'bench', 'browser.mjs');
    const r = spawnSync(
      process.execPath,
      [script, '--model', join(FIXTURES, 'hf-gpt2-tiny'), '--prompt-tokens', '9', '--new-tokens', '3', '--json'],
      { encoding: 'utf8', timeout: 300_000 },
    );
    assert.is(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.match(j.browser, new RegExp(`^Chromium ${CHROMIUM_MAJOR}\\.`));
    assert.is(j.model, join(FIXTURES, 'hf-gpt2-tiny'));
    assert.is(j.adapter.architecture, 'swiftshader'); // headless Chromium without a GPU flag
    assert.is(j.profile.name, 'swiftshader'); // a CPU adapter with 4-lane subgroups
    assert.is(j.matmul_prompt, 'subgroups'); // so a 9-token prompt takes the 4-lane subgroup GEMM
    assert.is(j.attention_decode, 'subgroup'); // and decode a 4-invocation subgroup per (row, head)
    // --profile: fields merged over the adapter's (here the token pairs and no subgroup GEMM)
    const file = join(mkdtempSync(join(tmpdir(), 'gpt2-bench-')), 'pairs.json');
    writeFileSync(file, JSON.stringify({ matmul: { subgroupLanes: 0 }, attention: { prompt: 'pairs' } }));
    const r2 = spawnSync(
      process.execPath,
      [
        script,
        '--model',
        join(FIXTURES, 'hf-gpt2-tiny'),
        '--prompt-tokens',
        '9',
        '--new-tokens',
        '2',
        '--no-profile',
        '--profile',
        file,
        '--json',
      ],
      { encoding: 'utf8', timeout: 300_000 },
    );
    assert.is(r2.status, 0, r2.stderr);
    const j2 = JSON.parse(r2.stdout);
    assert.equal([j2.profile.name, j2.matmul_prompt, j2.attention_prompt], ['swiftshader', 'cols', 'pairs']);
    assert.equal(j2.profile_overrides, { matmul: { subgroupLanes: 0 }, attention: { prompt: 'pairs' } });
    const x = j.results[0];
    for (const k of [
      'load_ms',
      'first_token_ms',
      'setup_ms',
      'prefill_ms',
      'decode_ms_per_token',
      'decode_ms_per_token_p90',
      'tokens_per_s',
      'readback_bytes_per_token',
      'dispatches_per_token',
      'submits_per_token',
    ]) {
      assert.type(x[k], 'number', k);
    }
    assert.is(x.readback_bytes_per_token, 4);
    assert.ok(Array.isArray(x.kernels) || typeof x.kernels_note === 'string');
    for (const [flag, msg] of [
      [
        ['--profile', join(tmpdir(), 'no-such-profile.json')],
        /--profile .*no-such-profile\.json: cannot read it \(ENOENT\)/,
      ],
      [['--matmul-subgroups', 'on'], /unknown flag --matmul-subgroups/],
      [['--model', 'nowhere:x'], /is not random:<name>, an http\(s\) URL or a folder here/],
      [['--frobnicate'], /unknown flag --frobnicate/],
    ] as const) {
      const bad = spawnSync(process.execPath, [script, ...flag], { encoding: 'utf8', timeout: 60_000 });
      assert.is(bad.status, 2, flag.join(' '));
      assert.match(bad.stderr, msg);
    }
  });
}

test.after(() => nodeEngine.destroy());
test.run();
