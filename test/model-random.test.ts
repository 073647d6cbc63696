/**
 * The forward pass against the float64 CPU GPT-2 (test/reference/gpt2.ts) on random configs: odd
 * widths, 1-4 layers, several head counts, f32 and f16 storage, a 13-token prompt and decode steps
 * after it, with the adapter's own device profile (test/profiles.test.ts runs the others). Needs no
 * fixtures, so scripts/device-check.sh runs it on a GPU machine too.
 */
import { test } from 'uvu';
import { allClose } from './helpers.js';
import * as assert from 'uvu/assert';
import { forward64, loadTensors } from './reference/gpt2.js';
import { cfgOf, decodeLogits, randomModel } from './model-util.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { roundF16 } from '../src/kernels/f16.js';
import { decodeMeta, ForwardPlan, PARKED_ROW, rowMeta } from '../src/engine/model.js';

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

// A parked token (meta row PARKED_ROW: a finished sequence riding in a decode step) writes no K/V
// anywhere and leaves the other rows' logits exact, with the adapter's kernels and the GPU
// profile's (here with K split across workgroups).
for (const gpu of [false, true]) {
  test(`a parked token in a decode step writes nothing and leaves the other rows exact (${gpu ? 'the GPU profile' : "the adapter's profile"})`, async () => {
    const cfg = CONFIGS[3]!;
    const ckpt = randomCheckpoint(cfg, 300);
    const tensors = await loadTensors(ckpt);
    const model = gpu
      ? await randomModel(cfg, 300, 'f32', { name: 'gpu', matmul: { splitK: 'split' } })
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
