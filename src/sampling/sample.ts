/**
 * One-vector sampling with user options: validates them (src/sampling/options.ts) and runs the GPU
 * sampler's single-row path (src/kernels/sampler.ts). Used by `Engine.sample` and the CLI's
 * `sample` command.
 */
import type { GpuContext } from '../gpu/device.js';
import { processRow, sampleRow } from '../kernels/sampler.js';
import { randomSeed, validateSampling, type SamplingOptions } from './options.js';

/**
 * Draws `count` tokens from one logits vector on the GPU: counts per vocab id, the distribution
 * sampled from (softmax over the kept tokens) and the seed used (`opts.seed`, else a random one).
 */
export function sample(
  ctx: GpuContext,
  logits: Float32Array,
  count: number,
  opts: SamplingOptions = {},
  prevTokens?: ArrayLike<number>,
): Promise<{ counts: Uint32Array; probs: Float32Array; seed: number }> {
  const o = validateSampling(opts, logits.length);
  return sampleRow(ctx, logits, count, o, o.seed ?? randomSeed(), prevTokens);
}

/**
 * The processed logits (logit_bias, repetition penalty, temperature, frequency and presence
 * penalties) as the sampler computes them; with temperature 0 (greedy) the logits are not divided.
 * Where x / temperature would overflow f32 (a tiny temperature), the row's largest x is subtracted
 * before dividing: the values are shifted, the distribution is the same.
 */
export function processLogits(
  ctx: GpuContext,
  logits: Float32Array,
  opts: SamplingOptions = {},
  prevTokens?: ArrayLike<number>,
): Promise<Float32Array> {
  return processRow(ctx, logits, validateSampling(opts, logits.length), prevTokens);
}
