/**
 * The whole model under every device profile (src/kernels/profile.ts), each forced on whatever
 * adapter runs the tests (the GPU profile on lavapipe included), so that a kernel this adapter
 * would not choose cannot rot untested: random configs against the float64 CPU GPT-2
 * (test/reference/gpt2.ts) through prompts in and past the GEMV range, long prompts (the 'blocks',
 * 'tiled' and subgroup attention) and decode steps; and the HF tiny fixture's greedy tokens. A
 * profile the device cannot run (the subgroup ones without subgroups) must be refused by name.
 * Also the profile's own rules: the adapter's choice, partial profiles merged over it, bad fields.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { allClose, rejects } from './helpers.js';
import { forward64, loadTensors } from './reference/gpt2.js';
import { cfgOf, decodeLogits, engine } from './model-util.js';
import { tinyCheckpoint, tinyReference } from './fixtures-util.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { roundF16 } from '../src/kernels/f16.js';
import { ForwardPlan, rowMeta } from '../src/engine/model.js';
import { deviceProfile, PROFILE_NAMES, PROFILES, resolveProfile } from '../src/kernels/profile.js';
import { InvalidOptionError } from '../src/errors.js';
import type { Model, PartialProfile } from '../src/engine/engine.js';
import type { GPT2Config } from '../src/engine/config.js';
import type { Checkpoint } from '../src/engine/checkpoint.js';

/** Every built-in profile, and the GPU one with its other K split (gemv_kn + reduce instead of gemv_kn_red). */
const CASES: Array<[string, PartialProfile]> = [
  ...PROFILE_NAMES.map((name): [string, PartialProfile] => [name, { name }]),
  ['gpu, K split across workgroups', { name: 'gpu', matmul: { splitK: 'split' } }],
];

/** What a 13-token prompt's matmuls and a 70-token prompt's attention take under each profile (head size 16). */
const EXPECT: Record<string, { matmul13: string; attention70: string; decode: string }> = {
  gpu: { matmul13: 'gemm', attention70: 'tiled', decode: 'wide' },
  cpu: { matmul13: 'cols', attention70: 'blocks', decode: 'lanes' },
  'cpu-subgroups': { matmul13: 'subgroups', attention70: 'subgroup', decode: 'subgroup' },
  swiftshader: { matmul13: 'subgroups', attention70: 'subgroup', decode: 'subgroup' },
};

// Odd widths (C 33, head size 11: no vec4 loads, the workgroup attention and the 'threads' GEMV on
// every profile) and aligned ones (C 64, head size 16: each profile's own kernels).
const ODD = cfgOf({ n_embd: 33, n_head: 3, n_layer: 2, vocab_size: 157 });
const MAIN = cfgOf({ n_embd: 64, n_head: 4, n_layer: 2, n_positions: 160, vocab_size: 257 });

/**
 * Loads `ckpt` under `profile`, or returns undefined where the device cannot run it: a subgroup
 * profile on a device without a single subgroup size of 4 or 8 (at least the profile's lanes)
 * must be refused, naming subgroups.
 */
async function loadUnder(ckpt: Checkpoint, dtype: 'f32' | 'f16', profile: PartialProfile): Promise<Model | undefined> {
  const e = await engine();
  try {
    return await e.loadModel(ckpt, { dtype, experimental: { profile } });
  } catch (err) {
    const lanes = profile.name === 'swiftshader' ? 4 : profile.name === 'cpu-subgroups' ? 8 : 0;
    const size = e.ctx.features.subgroupSize;
    if (lanes && !((size === 4 || size === 8) && size >= lanes) && err instanceof InvalidOptionError) {
      assert.match(err.message, /subgroup/);
      return undefined;
    }
    throw err;
  }
}

const load = (cfg: GPT2Config, seed: number, dtype: 'f32' | 'f16', profile: PartialProfile) =>
  loadUnder(randomCheckpoint(cfg, seed), dtype, profile);

/** The float64 reference's tensors for a random checkpoint (f16-rounded matrices for f16 storage). */
async function reference(cfg: GPT2Config, seed: number, dtype: 'f32' | 'f16') {
  const tensors = await loadTensors(randomCheckpoint(cfg, seed));
  if (dtype === 'f16') {
    for (const [name, t] of tensors) {
      if (/(wte|wpe)\.weight$|c_(attn|proj|fc)\.weight$/.test(name))
        for (let i = 0; i < t.length; i++) t[i] = roundF16(t[i]!);
    }
  }
  return tensors;
}

for (const [label, profile] of CASES) {
  for (const [ci, cfg, dtype] of [
    [0, ODD, 'f32'],
    [1, MAIN, 'f32'],
    [1, MAIN, 'f16'],
  ] as const) {
    test(`profile ${label}: random config (C ${cfg.n_embd}, H ${cfg.n_head}, ${dtype}) matches the float64 forward at 7 and 13 tokens and in decode steps`, async () => {
      const model = await load(cfg, 400 + ci, dtype, profile);
      if (!model) return;
      try {
        const tensors = await reference(cfg, 400 + ci, dtype);
        const rel = dtype === 'f32' ? 1e-5 : 1e-4;
        // 7 tokens: the GEMVs; 13: the GEMM (GPU) or the subgroup GEMM (CPU adapters with subgroups)
        for (const T of [7, 13]) {
          const ids = Array.from({ length: T }, (_, i) => (i * 41 + ci) % cfg.vocab_size);
          const got = await model.logits(ids, { allPositions: true });
          allClose(got.data, forward64(tensors, cfg, ids), { rel }, `logits, ${T} tokens`);
        }
        if (cfg === MAIN) assert.is(model.promptMatmul(13), EXPECT[model.profile.name]!.matmul13);
        // Decode steps after a prefill, also after a bucketed prompt plan (5 of 8 tokens, 13 of 16: parked tokens)
        const p13 = Array.from({ length: 13 }, (_, i) => (i * 29 + 3) % cfg.vocab_size);
        for (const [prompt, planTokens] of [
          [[3, 1, 4, 1, 5], 8],
          [p13, 16],
        ] as const) {
          const fed = [9, 2, 6];
          const steps = await decodeLogits(model, [...prompt], fed, planTokens);
          steps.forEach((got, i) => {
            const ids = [...prompt, ...fed.slice(0, i + 1)];
            const want = forward64(tensors, cfg, ids).subarray((ids.length - 1) * cfg.vocab_size);
            allClose(
              got,
              want,
              { rel },
              `decode step ${i} after ${prompt.length} tokens in a ${planTokens}-token plan`,
            );
          });
        }
      } finally {
        model.destroy();
      }
    });
  }

  // Long prompts: 70 tokens, then 66 more on the same cache row (keys of both parts), through the
  // profile's prompt attention ('tiled', 'blocks', 'subgroup').
  test(`profile ${label}: long prompts (70 tokens, then 66 more on the same row) match the float64 forward`, async () => {
    const model = await load(MAIN, 7, 'f32', profile);
    if (!model) return;
    const tensors = await reference(MAIN, 7, 'f32');
    const V = MAIN.vocab_size;
    const ids = Array.from({ length: 136 }, (_, i) => (i * 53 + 11) % V);
    const want = forward64(tensors, MAIN, ids);
    const expect = EXPECT[model.profile.name]!;
    assert.equal([model.promptAttention(70), model.decodeAttention()], [expect.attention70, expect.decode]);
    const cache = await model.createCache({ capacity: 160 });
    const first = new ForwardPlan(model, cache, 70, 70);
    const second = new ForwardPlan(model, cache, 66, 66);
    try {
      const all = (n: number) => Uint32Array.from({ length: n }, (_, i) => i);
      first.write({ ids: ids.slice(0, 70), meta: rowMeta(0, 0, 70), lastIdx: all(70) });
      model.submit(first.dispatches);
      const got1 = new Float32Array(await model.ctx.readBuffer(first.logits.buffer, 0, 70 * V * 4));
      allClose(got1, want.subarray(0, 70 * V), { rel: 1e-5 }, 'first 70 positions');
      second.write({ ids: ids.slice(70), meta: rowMeta(0, 70, 66), lastIdx: all(66) });
      model.submit(second.dispatches);
      const got2 = new Float32Array(await model.ctx.readBuffer(second.logits.buffer, 0, 66 * V * 4));
      allClose(got2, want.subarray(70 * V), { rel: 1e-5 }, 'positions 70-135');
      model.ctx.throwIfErrors();
    } finally {
      first.destroy();
      second.destroy();
      cache.destroy();
      model.destroy();
    }
  });

  // The HF tiny fixture (V 50257: the chunked, and on CPU profiles transposed and paneled, LM head):
  // greedy tokens identical to transformers'.
  test(`profile ${label}: tiny fixture greedy tokens identical to transformers`, async () => {
    const model = await loadUnder(await tinyCheckpoint(), 'f32', profile);
    if (!model) return;
    try {
      for (const [i, p] of tinyReference().prompts.slice(0, 2).entries()) {
        const res = await model.generate(p.ids, { temperature: 0, maxNewTokens: 24, stopAtEos: false });
        assert.equal([...p.ids, ...res.sequences[0]!.tokens], p.greedy48.slice(0, p.ids.length + 24), `prompt ${i}`);
      }
    } finally {
      model.destroy();
    }
  });
}

test("the adapter's profile: GPU or CPU by the adapter, the subgroup size picks the CPU one", async () => {
  const ctx = (await engine()).ctx;
  const p = deviceProfile(ctx);
  const size = ctx.features.subgroupSize;
  const want = !ctx.isCpuAdapter
    ? 'gpu'
    : size === 4
      ? 'swiftshader'
      : size !== null && size >= 8
        ? 'cpu-subgroups'
        : 'cpu';
  assert.is(p.name, want);
  assert.equal({ ...p.attention }, { ...PROFILES[want].attention });
  assert.is(p.pipelineDepth, ctx.isCpuAdapter ? 1 : 3);
  assert.is(p.promptBuckets, !ctx.isCpuAdapter);
  // a copy: changing it changes no built-in profile
  p.matmul.gemmTile.tx = 1;
  assert.is(PROFILES[want].matmul.gemmTile.tx, 16);
});

test("partial profiles: merged field by field over the adapter's or a named one, checked, unknown fields refused", async () => {
  const ctx = (await engine()).ctx;
  const own = deviceProfile(ctx);
  const p = resolveProfile(ctx, { attention: { decode: 'query' }, pipelineDepth: 2, promptBuckets: undefined });
  assert.equal(
    [p.name, p.attention.decode, p.attention.prompt, p.pipelineDepth],
    [own.name, 'query', own.attention.prompt, 2],
  );
  assert.is(p.promptBuckets, own.promptBuckets, 'an undefined field is not given');
  const g = resolveProfile(ctx, { name: 'gpu', matmul: { gemvMaxM: 4 } });
  assert.equal([g.name, g.matmul.gemv, g.matmul.gemvMaxM, g.attention.decode], ['gpu', 'threads', 4, 'wide']);
  for (const [partial, re] of [
    [{ nmae: 'gpu' }, /profile: unknown field "nmae"; the fields are name, matmul/],
    [{ name: 'tpu' }, /profile\.name must be one of gpu, cpu, cpu-subgroups, swiftshader, got "tpu"/],
    [{ matmul: { gemv: 'rows' } }, /profile\.matmul\.gemv must be 'threads' or 'cols', got "rows"/],
    [{ matmul: { fuse: true } }, /profile\.matmul: unknown field "fuse"/],
    [{ matmul: 3 }, /profile\.matmul must be an object of matmul fields, got 3/],
    [
      { attention: { prompt: 'flash' } },
      /profile\.attention\.prompt must be 'tiled', 'pairs', 'blocks', 'subgroup' or 'query', got "flash"/,
    ],
    [{ layernorm: 'lanes' }, /profile: unknown field "layernorm"/],
    [{ pipelineDepth: 0 }, /profile\.pipelineDepth must be an integer in \[1, 16\], got 0/],
    [{ promptBuckets: 'yes' }, /profile\.promptBuckets must be a boolean, got "yes"/],
    [{ logprobsWg: 12 }, /profile\.logprobsWg must be a power of two in \[1, 256\], got 12/],
    [{ layernormWg: 512 }, /profile\.layernormWg must be a power of two in \[1, 256\], got 512/],
    [[], /profile must be an object of profile fields, got \[\]/],
    [{ name: 'gpu', matmul: { panel: 256 } }, /panel 256 stores weights that only gemv_kn_cols reads/],
  ] as Array<[unknown, RegExp]>) {
    assert.throws(
      () => resolveProfile(ctx, partial as PartialProfile),
      (e: Error) => e instanceof InvalidOptionError && re.test(e.message),
      JSON.stringify(partial),
    );
  }
  // the engine checks the profile before it uploads anything, naming the option
  await rejects(
    async () => (await engine()).loadModel('random:gpt2', { experimental: { profile: { pipelineDepth: 17 } } }),
    (e) => e instanceof InvalidOptionError && /^experimental\.profile\.pipelineDepth must be/.test(e.message),
  );
});

test.run();
