import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidOptionError, WeightsFormatError } from '../src/errors.js';
import {
  GPT2Config,
  HUB_REPOS,
  KNOWN_MODELS,
  parameterCount,
  parameterShapes,
  parseConfig,
} from '../src/engine/config.js';
import { openCheckpoint } from '../src/engine/checkpoint.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { bytesSource } from '../src/engine/safetensors.js';
import { roundF16 } from '../src/kernels/f16.js';
import { makeSafetensors, REPO_ROOT, rejectsWith, smallConfig, tinyCheckpoint } from './fixtures-util.js';

const throwsFormat = (fn: () => unknown, re: RegExp) =>
  assert.throws(
    fn,
    (e: Error) => e instanceof WeightsFormatError && re.test(e.message),
    `expected WeightsFormatError matching ${re}`,
  );

test('parseConfig accepts HF configs, fills HF defaults, and rejects bad values with the numbers', () => {
  const c = parseConfig(
    { vocab_size: 50300, n_positions: 32, n_embd: 12, n_layer: 1, n_head: 3, unknown_key: 1 },
    'cfg.json',
  );
  assert.equal(c, {
    vocab_size: 50300,
    n_positions: 32,
    n_embd: 12,
    n_layer: 1,
    n_head: 3,
    layer_norm_epsilon: 1e-5,
    activation_function: 'gelu_new',
    bos_token_id: 50256,
    eos_token_id: 50256,
    n_inner: null,
  });
  // HF's default bos/eos (50256) do not fit a small vocabulary: the config must say which ids it uses
  throwsFormat(
    () => parseConfig({ vocab_size: 100, n_positions: 32, n_embd: 12, n_layer: 1, n_head: 3 }, 'c'),
    /"bos_token_id" must be an integer in \[0, vocab_size 100\), got 50256/,
  );
  const base = { vocab_size: 50257, n_positions: 1024, n_embd: 768, n_layer: 12, n_head: 12 };
  assert.is(parseConfig({ ...base, activation_function: 'gelu_pytorch_tanh', n_inner: 3072 }, 'x').n_inner, 3072);
  throwsFormat(
    () => parseConfig({ ...base, n_embd: 770 }, 'cfg.json'),
    /^cfg\.json: n_embd 770 is not divisible by n_head 12$/,
  );
  throwsFormat(
    () => parseConfig({ ...base, activation_function: 'relu' }, 'c'),
    /activation_function "relu" is not supported.*gelu_new/,
  );
  throwsFormat(
    () => parseConfig({ ...base, activation_function: 'gelu' }, 'c'),
    /activation_function "gelu" is not supported/,
  );
  throwsFormat(
    () => parseConfig({ ...base, n_inner: 1000 }, 'c'),
    /n_inner 1000 is not supported; only null or 4 \* n_embd = 3072/,
  );
  throwsFormat(
    () => parseConfig({ ...base, layer_norm_epsilon: 0 }, 'c'),
    /"layer_norm_epsilon" must be a number > 0, got 0/,
  );
  throwsFormat(() => parseConfig({ ...base, n_layer: 0 }, 'c'), /"n_layer" must be a positive integer, got 0/);
  throwsFormat(() => parseConfig({ ...base, n_head: 1.5 }, 'c'), /"n_head" must be a positive integer, got 1.5/);
  throwsFormat(() => parseConfig({ ...base, vocab_size: undefined }, 'c'), /missing "vocab_size"/);
  throwsFormat(
    () => parseConfig({ ...base, eos_token_id: 50257 }, 'c'),
    /"eos_token_id" must be an integer in \[0, vocab_size 50257\), got 50257/,
  );
  throwsFormat(() => parseConfig({ ...base, model_type: 'llama' }, 'c'), /model_type is "llama"/);
  throwsFormat(
    () => parseConfig({ ...base, scale_attn_by_inverse_layer_idx: true }, 'c'),
    /scale_attn_by_inverse_layer_idx/,
  );
  throwsFormat(() => parseConfig({ ...base, tie_word_embeddings: false }, 'c'), /tie_word_embeddings = false/);
  throwsFormat(() => parseConfig([1], 'c'), /config must be a JSON object, got an array/);
});

test('KNOWN_MODELS agree with weights/manifest.json and the published parameter counts', () => {
  const manifest = JSON.parse(readFileSync(join(REPO_ROOT, 'weights', 'manifest.json'), 'utf8')) as {
    models: Record<string, { hub_repo: string; parameters: number; config: GPT2Config }>;
  };
  assert.equal(Object.keys(manifest.models).sort(), Object.keys(KNOWN_MODELS).sort());
  for (const [name, cfg] of Object.entries(KNOWN_MODELS)) {
    const m = manifest.models[name]!;
    assert.equal(parseConfig(m.config, name), cfg, name);
    assert.is(m.parameters, parameterCount(cfg), name);
    assert.is(m.hub_repo, HUB_REPOS[name as keyof typeof HUB_REPOS]);
    // parameterShapes and parameterCount must agree
    let n = 0;
    for (const s of parameterShapes(cfg).values()) n += s.reduce((a, b) => a * b, 1);
    assert.is(n, parameterCount(cfg), name);
  }
  assert.is(parameterCount(KNOWN_MODELS.gpt2), 124_439_808); // GPT-2 small, the "124M" model
  assert.is(parameterCount(KNOWN_MODELS['gpt2-xl']), 1_557_611_200);
});

test('the HF tiny fixture opens: prefixed names resolve, shapes match the config', async () => {
  const ck = await tinyCheckpoint();
  assert.is(ck.config.n_embd, 64);
  assert.ok(ck.has('wte.weight') && ck.has('h.1.mlp.c_proj.bias'));
  assert.not.ok(ck.has('transformer.wte.weight'));
  assert.equal(ck.shape('h.0.attn.c_attn.weight'), [64, 192]);
  const rows = await ck.readRows('wte.weight', 100, 2);
  const all = await ck.read('wte.weight');
  assert.equal(Array.from(rows), Array.from(all.subarray(100 * 64, 102 * 64)));
});

test('unprefixed names, attn.bias buffers and lm_head.weight are accepted (and ignored)', async () => {
  const cfg = smallConfig();
  const { bytes, values } = await makeSafetensors(cfg, {
    extra: [
      { name: 'h.0.attn.bias', dtype: 'F32', shape: [1, 1, 16, 16], data: new Uint8Array(16 * 16 * 4) },
      { name: 'h.1.attn.masked_bias', dtype: 'F32', shape: [], data: new Uint8Array(4) },
      { name: 'lm_head.weight', dtype: 'F32', shape: [97, 8], data: new Uint8Array(97 * 8 * 4) },
    ],
  });
  const ck = await openCheckpoint({ ...cfg }, bytesSource('m.safetensors', bytes), 'dir');
  assert.not.ok(ck.has('lm_head.weight'));
  assert.not.ok(ck.has('h.0.attn.bias'));
  assert.equal(Array.from(await ck.read('h.1.ln_2.weight')), Array.from(values.get('h.1.ln_2.weight')!));
});

test('F16 and BF16 checkpoints load as f32 of the stored values', async () => {
  const cfg = smallConfig();
  for (const dtype of ['F16', 'BF16'] as const) {
    const { bytes, values } = await makeSafetensors(cfg, { dtype, prefix: true });
    const ck = await openCheckpoint(cfg, bytesSource(`${dtype}.safetensors`, bytes), dtype);
    const got = await ck.read('h.0.mlp.c_fc.weight');
    const want = values.get('h.0.mlp.c_fc.weight')!;
    assert.is(got.length, want.length);
    // BF16 values were truncated before writing (exact); F16 stores the nearest half
    const exp = dtype === 'F16' ? Array.from(want, roundF16) : Array.from(want);
    assert.equal(Array.from(got), exp);
  }
});

test('bad checkpoints fail before any GPU work, naming the tensor and both shapes', async () => {
  const cfg = smallConfig();
  const open = async (o: Parameters<typeof makeSafetensors>[1], c: unknown = cfg) =>
    openCheckpoint(c, bytesSource('m.safetensors', (await makeSafetensors(cfg, o)).bytes), 'mdir');
  await rejectsWith(
    open({ omit: ['h.1.attn.c_proj.bias'] }),
    WeightsFormatError,
    /^m\.safetensors: missing tensor "h\.1\.attn\.c_proj\.bias" \(expected shape \[8\]/,
  );
  await rejectsWith(
    open({ reshape: { 'h.0.attn.c_attn.weight': [24, 8] } }),
    WeightsFormatError,
    /tensor "h\.0\.attn\.c_attn\.weight" has shape \[24, 8\] but the config needs \[8, 24\]/,
  );
  await rejectsWith(
    open({}, { ...cfg, n_layer: 1 }),
    WeightsFormatError,
    /tensor "h\.1\..*" belongs to layer 1 but the config has n_layer 1/,
  );
  await rejectsWith(open({}, { ...cfg, n_layer: 3 }), WeightsFormatError, /missing tensor "h\.2\.ln_1\.weight"/);
  await rejectsWith(
    open({}, { ...cfg, n_embd: 7 }),
    WeightsFormatError,
    /^mdir config\.json: n_embd 7 is not divisible by n_head 2/,
  );
  await rejectsWith(
    open({
      prefix: true,
      extra: [{ name: 'wpe.weight', dtype: 'F32', shape: [16, 8], data: new Uint8Array(16 * 8 * 4) }],
    }),
    WeightsFormatError,
    /tensor "wpe\.weight" appears twice \(as "transformer\.wpe\.weight" and "wpe\.weight"\)/,
  );
});

test('random checkpoints: deterministic per seed, row reads agree, value laws hold', async () => {
  const a = randomCheckpoint('gpt2', 7);
  const b = randomCheckpoint('gpt2', 7);
  const c = randomCheckpoint('gpt2', 8);
  const w = await a.read('h.3.mlp.c_fc.weight'); // [768, 3072]
  assert.equal(Array.from((await b.read('h.3.mlp.c_fc.weight')).subarray(0, 1000)), Array.from(w.subarray(0, 1000)));
  assert.not.equal(Array.from((await c.read('h.3.mlp.c_fc.weight')).subarray(0, 10)), Array.from(w.subarray(0, 10)));
  assert.equal(
    Array.from(await a.readRows('h.3.mlp.c_fc.weight', 700, 3)),
    Array.from(w.subarray(700 * 3072, 703 * 3072)),
  );
  assert.equal(
    Array.from(await a.readRows('h.3.ln_1.bias', 5, 4)),
    Array.from((await a.read('h.3.ln_1.bias')).subarray(5, 9)),
  );
  const other = await a.read('h.3.attn.c_attn.weight'); // a different tensor is not a copy
  assert.not.equal(Array.from(other.subarray(0, 10)), Array.from(w.subarray(0, 10)));
  const stats = (x: Float32Array) => {
    let s = 0,
      s2 = 0;
    for (const v of x) {
      s += v;
      s2 += v * v;
    }
    const m = s / x.length;
    return { mean: m, std: Math.sqrt(s2 / x.length - m * m) };
  };
  const sw = stats(w);
  assert.ok(Math.abs(sw.mean) < 2e-4 && Math.abs(sw.std - 0.02) < 5e-4, `matrix mean ${sw.mean} std ${sw.std}`);
  const g = stats(await a.read('ln_f.weight'));
  assert.ok(Math.abs(g.mean - 1) < 0.02 && g.std > 0.05 && g.std < 0.15, `ln gain mean ${g.mean} std ${g.std}`);
  assert.throws(
    () => randomCheckpoint('gpt3'),
    (e: Error) => e instanceof InvalidOptionError && /unknown model "gpt3".*gpt2-xl/.test(e.message),
  );
  assert.throws(
    () => randomCheckpoint({ ...smallConfig(), n_head: 3 }),
    (e: Error) => e instanceof WeightsFormatError && /n_embd 8 is not divisible by n_head 3/.test(e.message),
  );
});

test('random:gpt2-xl has the published shapes and reads lazily', async () => {
  const xl = randomCheckpoint('gpt2-xl');
  const shapes = parameterShapes(xl.config);
  assert.is(shapes.size, 2 + 48 * 12 + 2);
  assert.equal(xl.shape('wte.weight'), [50257, 1600]);
  assert.equal(xl.shape('wpe.weight'), [1024, 1600]);
  assert.equal(xl.shape('h.47.attn.c_attn.weight'), [1600, 4800]);
  assert.equal(xl.shape('h.47.mlp.c_proj.weight'), [6400, 1600]);
  assert.not.ok(xl.has('h.48.ln_1.weight'));
  assert.is(parameterCount(xl.config), 1_557_611_200);
  const last = await xl.readRows('wte.weight', 50256, 1);
  assert.is(last.length, 1600);
  assert.ok(last.every((v) => Number.isFinite(v) && Math.abs(v) < 0.1));
});

test.run();
