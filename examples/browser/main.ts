/**
 * The browser example: load a GPT-2 (a base URL holding config.json + model.safetensors, or local
 * files), generate from a prompt with the chosen sampling options, stream the text and show tokens/s.
 *
 * Downloads go through Cache Storage (caches.open) so a reload does not fetch the weights again.
 *
 * URL mode (used by test/browser.test.ts): `?model=<base URL>&ids=1,2,3` (or `&prompt=...`)
 * `&temperature=0&max_new_tokens=48&seed=..&top_k=..&top_p=..&dtype=f32&stop_at_eos=1` fills the form
 * (settings not given keep the form's defaults) and runs at once; the outcome goes to #result:
 * JSON `{"tokens": [new ids], "text": "...", "seed": n}` with data-done="1", or data-error="<message>". #result also gets data-adapter (JSON: description,
 * isFallbackAdapter, vendor, architecture, limits, features) and data-cache ("hit" when every model
 * file came from Cache Storage, else "miss"). `window.gpt2example.run({...same keys})` runs again
 * on the same page, reusing the loaded model (the test uses it to avoid rebuilding pipelines).
 *
 * Bundled by scripts/build-browser.js into dist/browser/example.js; the import of the library source
 * below becomes an import of ./gpt2-webgpu.js (the library bundle).
 */
import {
  Engine,
  PromptError,
  type GenerateResult,
  type LoadProgress,
  type Model,
  type ModelSource,
} from '../../src/index.js';

const CACHE_NAME = 'gpt2-webgpu-weights-v1';
const MODEL_FILES = ['config.json', 'model.safetensors'];

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`index.html lacks #${id}`);
  return el as T;
};
const ui = {
  form: $<HTMLFormElement>('form'),
  checkpoint: $<HTMLSelectElement>('checkpoint'),
  model: $<HTMLInputElement>('model'),
  files: $<HTMLInputElement>('files'),
  dtype: $<HTMLSelectElement>('dtype'),
  clearCache: $<HTMLButtonElement>('clear-cache'),
  prompt: $<HTMLTextAreaElement>('prompt'),
  temperature: $<HTMLInputElement>('temperature'),
  topK: $<HTMLInputElement>('top_k'),
  topP: $<HTMLInputElement>('top_p'),
  seed: $<HTMLInputElement>('seed'),
  maxNewTokens: $<HTMLInputElement>('max_new_tokens'),
  stopAtEos: $<HTMLInputElement>('stop_at_eos'),
  run: $<HTMLButtonElement>('run'),
  stop: $<HTMLButtonElement>('stop'),
  load: $<HTMLDivElement>('load'),
  progress: $<HTMLProgressElement>('progress'),
  phase: $<HTMLSpanElement>('phase'),
  output: $<HTMLPreElement>('output'),
  stats: $<HTMLParagraphElement>('stats'),
  status: $<HTMLParagraphElement>('status'),
  result: $<HTMLPreElement>('result'),
};

const mb = (n: number): string => (n / 1048576).toFixed(1);

function setStatus(text: string, isError = false): void {
  ui.status.textContent = text;
  ui.status.classList.toggle('error', isError);
}

/** A model that could not be loaded: which file or field, and why (the cause keeps the original error). */
class ModelLoadError extends Error {
  override name = 'ModelLoadError';
}

/** "Name: message", then each cause's on its own line: what went wrong and where it started. */
function describe(e: unknown): string {
  const lines: string[] = [];
  for (let c: unknown = e; c instanceof Error && lines.length < 4; c = c.cause)
    lines.push(`${lines.length ? 'caused by ' : ''}${c.name}: ${c.message}`);
  return lines.length ? lines.join('\n') : String(e);
}

/** Shows only the source fields the checkpoint choice needs (a URL field, a file picker). */
function showSourceFields(): void {
  document
    .querySelectorAll<HTMLElement>('[data-for-source]')
    .forEach((el) => (el.hidden = el.dataset.forSource !== ui.checkpoint.value));
}

function showProgress(phase: string, loaded: number, total: number): void {
  ui.load.classList.add('active');
  if (phase === 'compile') {
    // No byte counts: 0 of 1 while the GPU pipelines are built, 1 of 1 when they are.
    ui.progress.removeAttribute('value'); // indeterminate
    ui.phase.textContent = loaded < total ? 'compiling GPU pipelines...' : 'GPU pipelines built';
    return;
  }
  ui.progress.max = total > 0 ? total : 1;
  ui.progress.value = total > 0 ? Math.min(loaded, total) : 0;
  if (total <= 0) ui.progress.removeAttribute('value'); // indeterminate
  ui.phase.textContent = total > 0 ? `${phase}: ${mb(loaded)} / ${mb(total)} MB` : `${phase}: ${mb(loaded)} MB`;
}

// ---- Downloads through Cache Storage ----

/**
 * Fetches `url` into an ArrayBuffer, reporting progress; served from Cache Storage when present,
 * stored there after a download. Cache Storage needs a secure context (https or localhost); without
 * it the page still works, only without the cache.
 */
async function fetchCached(
  url: string,
  onProgress: (loaded: number, total: number) => void,
): Promise<{ data: ArrayBuffer; cached: boolean }> {
  const cache = 'caches' in globalThis ? await caches.open(CACHE_NAME).catch(() => null) : null;
  const hit = await cache?.match(url);
  if (hit) {
    const data = await hit.arrayBuffer();
    onProgress(data.byteLength, data.byteLength);
    return { data, cached: true };
  }
  let res: Response;
  try {
    res = await fetch(url);
  } catch (e) {
    // fetch says only "Failed to fetch": offline, a wrong host, or a server without CORS headers.
    throw new ModelLoadError(
      `could not download ${url} (offline, a wrong address, or a server that does not allow cross-origin requests)`,
      { cause: e },
    );
  }
  if (!res.ok) throw new ModelLoadError(`GET ${url} failed: HTTP ${res.status} ${res.statusText}`);
  // Content-Length is the encoded size when the server compresses; then the buffer grows as needed.
  const total = res.headers.get('content-encoding') ? 0 : Number(res.headers.get('content-length') ?? 0);
  let buf = new Uint8Array(total || 1 << 20);
  let n = 0;
  const reader = res.body!.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (n + value.byteLength > buf.byteLength) {
      const grown = new Uint8Array(Math.max(buf.byteLength * 2, n + value.byteLength));
      grown.set(buf.subarray(0, n));
      buf = grown;
    }
    buf.set(value, n);
    n += value.byteLength;
    onProgress(n, total);
  }
  const data = n === buf.byteLength ? buf.buffer : buf.slice(0, n).buffer;
  try {
    await cache?.put(
      url,
      new Response(data, {
        headers: { 'Content-Type': res.headers.get('content-type') ?? 'application/octet-stream' },
      }),
    );
  } catch (e) {
    // Quota exceeded and the like: the model still runs, the next load downloads again.
    console.warn(`could not keep ${url} in Cache Storage: ${(e as Error).message}`);
  }
  return { data, cached: false };
}

/** Base URL with exactly one trailing slash, resolved against the page. */
function baseUrl(raw: string): string {
  const u = new URL(raw.trim(), location.href);
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return u.href;
}

// ---- Engine and model state ----

let enginePromise: Promise<Engine> | null = null;
let loaded: { key: string; model: Model; cached: boolean } | null = null;
let running: AbortController | null = null;

function engine(): Promise<Engine> {
  // Engine.create throws WebGPUUnavailableError (with how to enable WebGPU) when there is no adapter.
  enginePromise ??= Engine.create({ gpu: navigator.gpu });
  enginePromise.catch(() => (enginePromise = null));
  return enginePromise;
}

/** The files or the base URL the form's checkpoint choice names; ModelLoadError when its field is empty. */
function chosenSource(): { files: File[] } | { url: string } {
  const choice = ui.checkpoint.value;
  if (choice === 'files') {
    const files = Array.from(ui.files.files ?? []);
    if (files.length === 0) throw new ModelLoadError('choose config.json and model.safetensors with the Files field');
    return { files };
  }
  const raw = choice === 'url' ? ui.model.value.trim() : choice;
  if (raw === '') throw new ModelLoadError('enter the base URL of a folder holding config.json and model.safetensors');
  try {
    return { url: baseUrl(raw) };
  } catch (e) {
    throw new ModelLoadError(`"${raw}" is not a URL`, { cause: e });
  }
}

/** Loads (or reuses) the model the form names. */
async function loadModel(): Promise<{ model: Model; cached: boolean }> {
  const chosen = chosenSource();
  const dtype = ui.dtype.value as 'f32' | 'f16' | 'q8' | 'q4';
  const key =
    'files' in chosen
      ? `files:${chosen.files.map((f) => `${f.name}:${f.size}:${f.lastModified}`).join(',')}:${dtype}`
      : `url:${chosen.url}:${dtype}`;
  if (loaded?.key === key) return loaded;
  loaded?.model.destroy();
  loaded = null;
  const eng = await engine();
  const onProgress = (p: LoadProgress): void => showProgress(p.phase, p.loaded, p.total);
  let source: ModelSource;
  let cached = false;
  if ('files' in chosen) {
    source = { files: chosen.files };
  } else {
    const base = chosen.url;
    // Download both files with one progress bar over their combined size.
    const progress = MODEL_FILES.map(() => ({ loaded: 0, total: 0 }));
    const got = await Promise.all(
      MODEL_FILES.map((f, i) =>
        fetchCached(base + f, (l, t) => {
          progress[i] = { loaded: l, total: t };
          const sum = progress.reduce((s, p) => ({ loaded: s.loaded + p.loaded, total: s.total + p.total }), {
            loaded: 0,
            total: 0,
          });
          showProgress('download', sum.loaded, sum.total);
        }),
      ),
    );
    cached = got.every((g) => g.cached);
    source = { config: JSON.parse(new TextDecoder().decode(got[0]!.data)) as object, safetensors: got[1]!.data };
  }
  setStatus('uploading weights to the GPU…');
  try {
    const model = await eng.loadModel(source, { dtype, onProgress });
    loaded = { key, model, cached };
    return loaded;
  } finally {
    ui.load.classList.remove('active');
  }
}

const num = (el: HTMLInputElement): number | undefined => (el.value.trim() === '' ? undefined : Number(el.value));

/** Runs one generation with the form's settings; returns the result. */
async function generate(promptIds: number[] | null): Promise<{ res: GenerateResult; cached: boolean }> {
  ui.stats.textContent = ''; // a failed run must not show the last run's figures
  ui.output.textContent = '';
  const { model, cached } = await loadModel();
  const input = promptIds ?? ui.prompt.value;
  const controller = new AbortController();
  running = controller;
  ui.stop.disabled = false;
  ui.output.textContent = '';
  const promptSpan = document.createElement('span');
  promptSpan.className = 'prompt';
  promptSpan.textContent = typeof input === 'string' ? input : model.tokenizer.decode(input);
  ui.output.append(promptSpan);
  const out = document.createTextNode('');
  ui.output.append(out);
  setStatus('generating…');
  let count = 0;
  let first = 0;
  try {
    const res = await model.generate(input, {
      maxNewTokens: num(ui.maxNewTokens),
      temperature: num(ui.temperature),
      topK: num(ui.topK),
      topP: num(ui.topP),
      seed: num(ui.seed),
      stopAtEos: ui.stopAtEos.checked,
      signal: controller.signal,
      onToken: (ev) => {
        out.appendData(ev.text);
        // Rate over the tokens after the first (the first one also pays for the prompt).
        if (count++ === 0) first = performance.now();
        else
          ui.stats.textContent = `${count} tokens, ${((count - 1) / ((performance.now() - first) / 1000)).toFixed(1)} tokens/s`;
      },
    });
    const s = res.stats;
    ui.stats.textContent = `${res.sequences[0]!.tokens.length} tokens, ${s.tokensPerSecond.toFixed(1)} tokens/s (prefill ${s.prefillMs.toFixed(0)} ms, ${s.decodeMsPerToken.toFixed(1)} ms/token), seed ${res.seed}`;
    setStatus('done');
    return { res, cached };
  } finally {
    running = null;
    ui.stop.disabled = true;
  }
}

// ---- Wiring ----

ui.stop.addEventListener('click', () => running?.abort());
ui.clearCache.addEventListener('click', async () => {
  const gone = 'caches' in globalThis && (await caches.delete(CACHE_NAME));
  setStatus(gone ? 'downloaded weights removed from Cache Storage' : 'nothing cached');
});
ui.form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (running) return;
  ui.run.disabled = true;
  generate(null)
    .catch((e: Error) => setStatus(e.name === 'AbortError' ? 'stopped' : describe(e), e.name !== 'AbortError'))
    .finally(() => (ui.run.disabled = false));
});

export interface ExampleRun {
  tokens: number[];
  text: string;
  seed: number;
}

declare global {
  interface Window {
    /** For scripts and tests: run again with query-style settings, reusing the loaded model. */
    gpt2example: { run(params: Record<string, string | number>): Promise<ExampleRun> };
  }
}

/**
 * URL mode: fills the form from query-style settings, runs once, reports into #result (data-done /
 * data-error are cleared first, so a second run through window.gpt2example reports afresh).
 */
async function runWith(q: URLSearchParams): Promise<ExampleRun> {
  delete ui.result.dataset.done;
  delete ui.result.dataset.error;
  ui.result.textContent = '';
  const set = (el: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement, name: string): void => {
    const v = q.get(name);
    if (v !== null) el.value = v;
  };
  const model = q.get('model');
  if (model !== null) {
    // A known checkpoint's URL selects it; any other URL goes to the URL field.
    const known = Array.from(ui.checkpoint.options).some((o) => o.value === model);
    ui.checkpoint.value = known ? model : 'url';
    if (!known) ui.model.value = model;
    showSourceFields();
  }
  set(ui.prompt, 'prompt');
  set(ui.temperature, 'temperature');
  set(ui.topK, 'top_k');
  set(ui.topP, 'top_p');
  set(ui.seed, 'seed');
  set(ui.maxNewTokens, 'max_new_tokens');
  set(ui.dtype, 'dtype');
  const eos = q.get('stop_at_eos');
  if (eos !== null) ui.stopAtEos.checked = eos !== '0' && eos !== 'false';
  const idsParam = q.get('ids');
  const pieces = idsParam?.split(',').map((s) => s.trim());
  if (pieces?.some((x) => !/^\d+$/.test(x)))
    throw new PromptError(`ids must be comma-separated non-negative integers, got "${idsParam}"`);
  ui.run.disabled = true;
  try {
    const { res, cached } = await generate(pieces ? pieces.map(Number) : null);
    const seq = res.sequences[0]!;
    const out: ExampleRun = { tokens: seq.tokens, text: seq.text, seed: res.seed };
    ui.result.dataset.cache = cached ? 'hit' : 'miss';
    ui.result.textContent = JSON.stringify(out);
    ui.result.dataset.done = '1';
    return out;
  } catch (e) {
    ui.result.dataset.error = describe(e);
    setStatus(describe(e), true);
    throw e;
  } finally {
    ui.run.disabled = false;
  }
}

window.gpt2example = {
  run: (params) =>
    runWith(new URLSearchParams(Object.entries(params).map(([k, v]): [string, string] => [k, String(v)]))),
};

async function main(): Promise<void> {
  const q = new URLSearchParams(location.search);
  const adapter = (await engine()).ctx.adapter;
  ui.result.dataset.adapter = JSON.stringify(adapter);
  setStatus(
    `WebGPU adapter: ${adapter.description || adapter.vendor}${adapter.isFallbackAdapter ? ' (software fallback)' : ''}`,
  );
  if (q.has('model')) await runWith(q);
}

ui.checkpoint.addEventListener('change', showSourceFields);
showSourceFields();

main().catch((e: Error) => {
  ui.result.dataset.error = describe(e);
  setStatus(describe(e), true);
  ui.load.classList.remove('active');
});
