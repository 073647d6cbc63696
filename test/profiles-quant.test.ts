/**
 * The whole model with q8 and q4 weights under every device profile (each forced on whatever
 * adapter runs the tests, as test/profiles.test.ts does for f32 / f16): random configs against the
 * float64 CPU GPT-2 on the dequantized weights (quant.ts's quantize then dequantize, wpe rounded to
 * f16 as the engine stores it), prompts in and past the GEMV range and decode steps; and the loader's
 * refusal of a bad dtype, before any GPU work.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { allClose, rejects } from './helpers.js';
import { forward64, loadTensors } from './reference/gpt2.js';
import { cfgOf, decodeLogits, engine } from './model-util.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { roundF16 } from '../src/kernels/f16.js';
import { dequantize, quantize, type QuantDType } from '../src/kernels/quant.js';
import { PROFILE_NAMES } from '../src/kernels/profile.js';
import { InvalidOptionError } from '../src/errors.js';
import type { Model, PartialProfile } from '../src/engine/engine.js';
import type { GPT2Config } from '../src/engine/config.js';

const CASES: Array<[string, PartialProfile]> = [
  ...PROFILE_NAMES.map((name): [string, PartialProfile] => [name, { name }]),
  ['gpu, K split across workgroups', { name: 'gpu', matmul: { splitK: 'split' } }],
];

// Odd widths (C 33: unaligned rows, the scalar paths everywhere) and aligned ones (C 64, K past
// one q4 group: each profile's own kernels).
const ODD = cfgOf({ n_embd: 33, n_head: 3, n_layer: 2, vocab_size: 157 });
const MAIN = cfgOf({ n_embd: 64, n_head: 4, n_layer: 2, n_positions: 160, vocab_size: 257 });

async function loadUnder(cfg: GPT2Config, seed: number, dtype: QuantDType, profile: PartialProfile) {
  const e = await engine();
  try {
    return await e.loadModel(randomCheckpoint(cfg, seed), { dtype, experimental: { profile } });
  } catch (err) {
    // A subgroup profile on a device without 4- or 8-lane subgroups is refused (profiles.test.ts checks how).
    if (err instanceof InvalidOptionError && /subgroup/.test(err.message)) return undefined;
    throw err;
  }
}

/** The float64 reference's tensors: the matrices as the engine computes with them. */
async function reference(cfg: GPT2Config, seed: number, dtype: QuantDType) {
  const tensors = await loadTensors(randomCheckpoint(cfg, seed));
  for (const [name, t] of tensors) {
    if (name === 'wpe.weight') for (let i = 0; i < t.length; i++) t[i] = roundF16(t[i]!);
    const [rows, cols] = name === 'wte.weight' ? [cfg.vocab_size, cfg.n_embd] : [0, 0];
    if (name === 'wte.weight') t.set(dequantize(quantize(t, rows, cols, dtype, 'cols'), rows, cols, dtype, 'cols'));
    const m = /c_(attn|proj|fc)\.weight$/.exec(name);
    if (m) {
      const C = cfg.n_embd;
      const [K, N] = { attn: [C, 3 * C], proj: [name.includes('mlp') ? 4 * C : C, C], fc: [C, 4 * C] }[m[1] as 'attn'];
      t.set(dequantize(quantize(t, K!, N!, dtype, 'rows'), K!, N!, dtype, 'rows'));
    }
  }
  return tensors;
}

for (const [label, profile] of CASES) {
  for (const dtype of ['q8', 'q4'] as const) {
    for (const [ci, cfg] of [
      [0, ODD],
      [1, MAIN],
    ] as const) {
      test(`profile ${label}, ${dtype}: random config (C ${cfg.n_embd}) matches the float64 forward on the dequantized weights at 7 and 13 tokens and in decode steps`, async () => {
        const model: Model | undefined = await loadUnder(cfg, 500 + ci, dtype, profile);
        if (!model) return;
        try {
          const tensors = await reference(cfg, 500 + ci, dtype);
          const rel = 1e-5;
          for (const T of [7, 13]) {
            const ids = Array.from({ length: T }, (_, i) => (i * 41 + ci) % cfg.vocab_size);
            const got = await model.logits(ids, { allPositions: true });
            allClose(got.data, forward64(tensors, cfg, ids), { rel }, `logits, ${T} tokens`);
          }
          const prompt = [3, 1, 4, 1, 5];
          const fed = [9, 2, 6];
          const steps = await decodeLogits(model, [...prompt], fed, 8);
          steps.forEach((got, i) => {
            const ids = [...prompt, ...fed.slice(0, i + 1)];
            const want = forward64(tensors, cfg, ids).subarray((ids.length - 1) * cfg.vocab_size);
            allClose(got, want, { rel }, `decode step ${i}`);
          });
        } finally {
          model.destroy();
        }
      });
    }
  }
}

test('a bad dtype is refused with InvalidOptionError naming the valid ones, before the source is read', async () => {
  const e = await engine();
  await rejects(
    () => e.loadModel('/nonexistent/folder', { dtype: 'q3' as never }),
    (err) =>
      err instanceof InvalidOptionError && /dtype must be one of 'f32', 'f16', 'q8', 'q4', got "q3"/.test(err.message),
  );
  assert.ok(true);
});

test.run();
