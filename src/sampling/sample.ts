/**
 * One-vector sampling with user options: validates them (src/sampling/options.ts) and runs the GPU
 * sampler's single-row path (src/kernels/sampler.ts). Used by `Engine.sample` and the CLI's
 * `sample` command.
 */
import type { GpuContext } from '../gpu/device.js';
import { processRow, sampleRow, type NormalizedSampling, type RowBans } from '../kernels/sampler.js';
import { InvalidOptionError } from '../errors.js';
import { bannedNext } from './bans.js';
import { randomSeed, validateSampling, type SamplingOptions } from './options.js';

/**
 * The bans of a row whose ids so far are `prev` (n-grams, bad words, suppressed tokens). There is
 * no EOS here, so minNewTokens has nothing to ban.
 */
function bansAfter(o: NormalizedSampling, prev: ArrayLike<number> | undefined): RowBans {
  return { always: [...bannedNext(Array.from(prev ?? []), o, [])], untilMin: [] };
}

/**
 * The logits a caller gives: a non-empty Float32Array with no NaN and no +Infinity (-Infinity is a
 * banned id) and at least one finite value; else InvalidOptionError, before any GPU work (a NaN
 * would come back as a distribution of zeros or NaN, quietly).
 */
function checkLogits(logits: Float32Array, what: string): void {
  if (!(logits instanceof Float32Array))
    throw new InvalidOptionError(
      `${what}: logits must be a Float32Array (Float32Array.from(values)), got ${Array.isArray(logits) ? 'an array' : typeof logits}`,
    );
  if (logits.length === 0) throw new InvalidOptionError(`${what}: logits are empty`);
  let finite = false;
  for (let i = 0; i < logits.length; i++) {
    const x = logits[i]!;
    if (Number.isNaN(x) || x === Infinity)
      throw new InvalidOptionError(`${what}: logits[${i}] is ${x}; logits must be finite or -Infinity (banned)`);
    finite ||= x !== -Infinity;
  }
  if (!finite) throw new InvalidOptionError(`${what}: every logit is -Infinity; nothing can be drawn`);
}

/**
 * Draws `count` tokens from one logits vector on the GPU: counts per vocab id, the distribution
 * sampled from (softmax over the kept tokens) and the seed used (`opts.seed`, else a random one).
 * `prevTokens` are the ids so far: the penalties count them and the bans look at them.
 */
export function sample(
  ctx: GpuContext,
  logits: Float32Array,
  count: number,
  opts: SamplingOptions = {},
  prevTokens?: ArrayLike<number>,
): Promise<{ counts: Uint32Array; probs: Float32Array; seed: number }> {
  checkLogits(logits, 'sample');
  const o = validateSampling(opts, logits.length);
  return sampleRow(ctx, logits, count, o, o.seed ?? randomSeed(), prevTokens, bansAfter(o, prevTokens));
}

/**
 * The processed logits (logit_bias, repetition penalty, hard bans after `prevTokens`, temperature,
 * frequency and presence penalties) as the sampler computes them; with temperature 0 (greedy) the
 * logits are not divided. Where x / temperature would overflow f32 (a tiny temperature), the row's
 * largest x is subtracted before dividing: the values are shifted, the distribution is the same.
 */
export function processLogits(
  ctx: GpuContext,
  logits: Float32Array,
  opts: SamplingOptions = {},
  prevTokens?: ArrayLike<number>,
): Promise<Float32Array> {
  checkLogits(logits, 'processLogits');
  const o = validateSampling(opts, logits.length);
  return processRow(ctx, logits, o, prevTokens, bansAfter(o, prevTokens));
}
