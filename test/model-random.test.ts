/**
 * The forward pass against the float64 CPU GPT-2 (test/reference/gpt2.ts) on random configs: odd
 * widths, 1-4 layers, several head counts, f32 and f16 storage, a 13-token prompt and decode steps
 * after it, with the adapter's own kernel choices and with the GPU's forced. Needs no fixtures, so
 * scripts/device-check.sh runs it on a GPU machine too.
 */
import { test } from 'uvu';
import { allClose } from './helpers.js';
import * as assert from 'uvu/assert';
import { forward64, loadTensors } from './reference/gpt2.js';
import { cfgOf, engine, randomModel } from './model-util.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { roundF16 } from '../src/kernels/f16.js';
import { decodeMeta, ForwardPlan, PARKED_ROW, rowMeta } from '../src/engine/model.js';
import type { Model } from '../src/engine/engine.js';

// Random configs against the float64 reference: odd widths, 1-4 layers, several head counts.
const CONFIGS = [
  cfgOf({ n_embd: 48, n_head: 4, n_layer: 1 }),
  cfgOf({ n_embd: 33, n_head: 3, n_layer: 2, vocab_size: 157 }), // odd width, odd head dim 11
  cfgOf({ n_embd: 64, n_head: 1, n_layer: 3 }),
  cfgOf({ n_embd: 96, n_head: 12, n_layer: 4, vocab_size: 300 }),
];
for (const [ci, cfg] of CONFIGS.entries()) {
  for (const dtype of ['f32', 'f16'] as const) {
    test(`random config ${ci} (C ${cfg.n_embd}, H ${cfg.n_head}, L ${cfg.n_layer}, ${dtype}) matches the float64 forward (13 tokens, then 3 decode steps)`, async () => {
      const ckpt = randomCheckpoint(cfg, 100 + ci);
      const tensors = await loadTensors(ckpt);
      if (dtype === 'f16') {
        // The reference uses the f16-rounded matrices the GPU sees (biases and norms stay f32).
        for (const [name, t] of tensors) {
          if (/(wte|wpe)\.weight$|c_(attn|proj|fc)\.weight$/.test(name))
            for (let i = 0; i < t.length; i++) t[i] = roundF16(t[i]!);
        }
      }
      const model = await randomModel(cfg, 100 + ci, dtype);
      try {
        const ids = Array.from({ length: 13 }, (_, i) => (i * 37 + ci) % cfg.vocab_size);
        const got = await model.logits(ids, { allPositions: true });
        const want = forward64(tensors, cfg, ids);
        allClose(got.data, want, { rel: dtype === 'f32' ? 1e-5 : 1e-4 }, 'logits');
        // Decode steps with the adapter's own kernel choices (CPU: one invocation per head; GPU:
        // wide attention workgroups, the GEMV with the layer norm in its prologue).
        const fed = [7 % cfg.vocab_size, 100 % cfg.vocab_size, 5];
        (await decodeLogits(model, ids, fed)).forEach((step, i) => {
          const all = [...ids, ...fed.slice(0, i + 1)];
          const last = forward64(tensors, cfg, all).subarray((all.length - 1) * cfg.vocab_size);
          allClose(step, last, { rel: dtype === 'f32' ? 1e-5 : 1e-4 }, `decode step ${i} logits`);
        });
      } finally {
        model.destroy();
      }
    });
  }
}

// Long prompts: on CPU adapters prompts take the subgroup attention where the device's subgroups
// hold 4+ invocations (prefill_sg: blocks of 8 tokens of a row share each K/V load), else, from
// BLOCKS_MIN_T tokens on, the 'blocks' attention (two matrix products through a score scratch
// shared by the layers; also what `subgroups: false` gives). A 70-token prompt, then a
// continuation of 66 tokens on the same cache row (keys of both parts), against the float64
// forward, with each of them.
for (const subgroups of [undefined, false] as const) {
  test(`long prompts (70 tokens, then 66 more on the same row) match the float64 forward; CPU adapters take the ${subgroups === false ? "'blocks' attention (subgroups: false)" : "subgroup attention where subgroups allow, else 'blocks'"}`, async () => {
    const cfg = cfgOf({ n_embd: 128, n_head: 2, n_layer: 2, n_positions: 160, vocab_size: 257 });
    const tensors = await loadTensors(randomCheckpoint(cfg, 7));
    const model = await randomModel(cfg, 7, 'f32', { subgroups });
    const V = cfg.vocab_size;
    const ids = Array.from({ length: 136 }, (_, i) => (i * 53 + 11) % V);
    const want = forward64(tensors, cfg, ids);
    const base = model.ctx.liveBuffers;
    const cache = await model.createCache({ capacity: 160 });
    const first = new ForwardPlan(model, cache, 70, 70);
    const second = new ForwardPlan(model, cache, 66, 66);
    try {
      // what reports (bench's attention_prompt) say a prompt plan runs
      const sg = model.ctx.isCpuAdapter && subgroups !== false && (model.ctx.features.subgroupSize ?? 0) >= 4;
      const cpu = (short: string) => (sg ? 'subgroup' : model.ctx.isCpuAdapter ? short : undefined);
      assert.is(model.promptAttention(70), cpu('blocks') ?? 'tiled');
      assert.is(model.promptAttention(63), cpu('pairs') ?? 'tiled');
      assert.is(model.promptAttention(1), cpu('lanes') ?? 'query');
      for (const plan of [first, second]) {
        const labels = plan.dispatches.map((d) => d.label);
        const att = labels.filter((l) => l.startsWith('h.0.attn')).join(', ');
        assert.is(
          labels.includes('h.0.attn.scores'),
          model.ctx.isCpuAdapter && !sg,
          `blocks attention on CPU adapters without the subgroup one only (labels: ${att})`,
        );
        assert.is(labels.includes('h.0.attn.sg'), sg, `prefill_sg where subgroups allow (labels: ${att})`);
      }
      const all = (n: number) => Uint32Array.from({ length: n }, (_, i) => i);
      first.write({ ids: ids.slice(0, 70), meta: rowMeta(0, 0, 70), lastIdx: all(70) });
      model.submit(first.dispatches);
      allClose(
        new Float32Array(await model.ctx.readBuffer(first.logits.buffer, 0, 70 * V * 4)),
        want.subarray(0, 70 * V),
        { rel: 1e-5 },
        'first 70 positions',
      );
      second.write({ ids: ids.slice(70), meta: rowMeta(0, 70, 66), lastIdx: all(66) });
      model.submit(second.dispatches);
      allClose(
        new Float32Array(await model.ctx.readBuffer(second.logits.buffer, 0, 66 * V * 4)),
        want.subarray(70 * V),
        { rel: 1e-5 },
        'positions 70-135',
      );
      model.ctx.throwIfErrors();
    } finally {
      first.destroy();
      second.destroy();
      cache.destroy();
    }
    // the plans' scratch (scores, queries) went with them
    assert.equal(model.ctx.liveBuffers, base);
    model.destroy();
  });
}

/**
 * Prefills `prompt`, then feeds `fed` one decode step each; every step's logits [V]. With
 * `planTokens` the prompt plan is built for that many tokens and the ones past the prompt parked
 * (a bucketed prompt plan): what they would write to the cache would show in the steps after.
 */
async function decodeLogits(
  model: Model,
  prompt: number[],
  fed: number[],
  planTokens = prompt.length,
): Promise<Float32Array[]> {
  const V = model.config.vocab_size;
  const cache = await model.createCache({ capacity: 32 });
  const pre = new ForwardPlan(model, cache, planTokens, 1);
  const dec = new ForwardPlan(model, cache, 1, 1, { decode: true });
  try {
    pre.write({ ids: prompt, meta: rowMeta(0, 0, prompt.length), lastIdx: Uint32Array.of(prompt.length - 1) });
    model.submit(pre.dispatches);
    const out: Float32Array[] = [];
    for (const [i, tok] of fed.entries()) {
      dec.write({ ids: [tok], meta: decodeMeta([prompt.length + i]) });
      model.submit(dec.dispatches);
      out.push(new Float32Array(await model.ctx.readBuffer(dec.logits.buffer, dec.logits.offset, V * 4)));
    }
    model.ctx.throwIfErrors();
    return out;
  } finally {
    pre.destroy();
    dec.destroy();
    cache.destroy();
  }
}

// The kernel choices a GPU gets (gemv_kn with the fused layer norm for M <= 8, the tiled GEMM
// with a layernorm dispatch past it, the 32-lane 'nk' LM head, plain row-major weights), forced on
// whatever adapter runs the tests, against the float64 forward: 7 tokens take the GEMVs, 13 the GEMM.
// Also with gemvReduce 'workgroup' (the decode GEMVs then split K inside their workgroups). Decode
// steps with the GPU's attention (256-thread workgroups) too, after a prefill.
const GPU_CHOICES = { knCols: false, nkRows: false, nkLanesPerRow: 32, knPanel: 0, fuseLn: true, gemvMaxM: 8 };
const GPU_ATTENTION = { lanes: false, decodeWg: 256 };
for (const [ci, cfg, gemvReduce] of [
  [0, CONFIGS[1]!, 'split'],
  [1, CONFIGS[3]!, 'split'],
  [1, CONFIGS[3]!, 'workgroup'],
] as const) {
  test(`GPU kernel choices (gemvReduce ${gemvReduce}), random config (C ${cfg.n_embd}, H ${cfg.n_head}, L ${cfg.n_layer}) match the float64 forward at 7 and 13 tokens and in decode steps`, async () => {
    const ckpt = randomCheckpoint(cfg, 200 + ci);
    const tensors = await loadTensors(ckpt);
    const model = await (
      await engine()
    ).loadModel(ckpt, { matmul: { ...GPU_CHOICES, gemvReduce }, attention: GPU_ATTENTION });
    try {
      assert.is(model.kernels.matmul.fuseLn, true);
      assert.is(model.kernels.matmul.gemvReduce, gemvReduce);
      for (const T of [7, 13]) {
        const ids = Array.from({ length: T }, (_, i) => (i * 41 + ci) % cfg.vocab_size);
        const got = await model.logits(ids, { allPositions: true });
        allClose(got.data, forward64(tensors, cfg, ids), { rel: 1e-5 }, `logits, ${T} tokens`);
      }
      // Decode steps (the wide attention writing K/V, the fused GEMVs at M = 1) after a prefill,
      // also after prompt plans with parked tokens: 5 of 8 (GEMVs), 13 of 16 (GEMM, a tile of the
      // tiled attention with parked tokens).
      const p13 = Array.from({ length: 13 }, (_, i) => (i * 29 + 3) % cfg.vocab_size);
      for (const [prompt, planTokens] of [
        [[3, 1, 4, 1, 5], 5],
        [[3, 1, 4, 1, 5], 8],
        [p13, 16],
      ] as const) {
        const fed = [9, 2, 6, 5];
        const steps = await decodeLogits(model, [...prompt], fed, planTokens);
        steps.forEach((got, i) => {
          const ids = [...prompt, ...fed.slice(0, i + 1)];
          const want = forward64(tensors, cfg, ids).subarray((ids.length - 1) * cfg.vocab_size);
          allClose(
            got,
            want,
            { rel: 1e-5 },
            `decode step ${i} logits after a ${prompt.length}-token prompt in a ${planTokens}-token plan`,
          );
        });
      }
    } finally {
      model.destroy();
    }
  });
}

// A parked token (meta row PARKED_ROW: a finished sequence riding in a decode step) writes no K/V
// anywhere and leaves the other rows' logits exact, with the adapter's kernels and the GPU's.
for (const gpu of [false, true]) {
  test(`a parked token in a decode step writes nothing and leaves the other rows exact (${gpu ? 'GPU kernel choices' : 'adapter kernel choices'})`, async () => {
    const cfg = CONFIGS[3]!;
    const ckpt = randomCheckpoint(cfg, 300);
    const tensors = await loadTensors(ckpt);
    const model = gpu
      ? await (
          await engine()
        ).loadModel(ckpt, { matmul: { ...GPU_CHOICES, gemvReduce: 'split' }, attention: GPU_ATTENTION })
      : await randomModel(cfg, 300);
    const cache = await model.createCache({ rows: 3, capacity: 16 });
    const prompt = [3, 1, 4, 1, 5];
    const pre = new ForwardPlan(model, cache, prompt.length * 3, 3);
    const dec = new ForwardPlan(model, cache, 3, 3, { decode: true });
    try {
      // Rows 0..2 hold the prompt; then one step: row 2 feeds 9, row 0's token is parked, row 1 feeds 7.
      const meta = new Uint32Array([...rowMeta(0, 0, 5), ...rowMeta(1, 0, 5), ...rowMeta(2, 0, 5)]);
      pre.write({ ids: [...prompt, ...prompt, ...prompt], meta, lastIdx: Uint32Array.of(4, 9, 14) });
      model.submit(pre.dispatches);
      const layer = async () => new Float32Array(await model.ctx.readBuffer(cache.k[0]!, 0, 3 * 16 * cfg.n_embd * 4));
      const before = await layer();
      dec.write({ ids: [9, 8, 7], meta: decodeMeta([5, 5, 5], [2, PARKED_ROW, 1]) });
      model.submit(dec.dispatches);
      const logits = new Float32Array(await model.ctx.readBuffer(dec.logits.buffer, 0, 3 * cfg.vocab_size * 4));
      model.ctx.throwIfErrors();
      const after = await layer();
      const C = cfg.n_embd;
      const row = (r: number, a: Float32Array) => Array.from(a.subarray(r * 16 * C, (r + 1) * 16 * C));
      assert.equal(row(0, after), row(0, before), 'the parked token wrote nothing (row 0 as before)');
      const V = cfg.vocab_size;
      for (const [i, tok] of [
        [0, 9],
        [2, 7],
      ] as const) {
        const ids = [...prompt, tok];
        allClose(
          logits.subarray(i * V, (i + 1) * V),
          forward64(tensors, cfg, ids).subarray(5 * V),
          { rel: 1e-5 },
          `token ${i}'s logits`,
        );
      }
    } finally {
      pre.destroy();
      dec.destroy();
      cache.destroy();
      model.destroy();
    }
  });
}

test.run();
