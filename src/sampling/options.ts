/**
 * Sampling options: their domains, defaults and the per-sequence seed.
 *
 * The order the sampler applies them in (src/kernels/sampler.ts, shaders/sampling.wgsl):
 * logit_bias, repetition_penalty, the hard bans (no-repeat n-grams, bad words, min new tokens,
 * suppressed tokens: -inf, transformers' order and place after its repetition penalty),
 * temperature (0 = greedy), frequency/presence penalty, top-k, top-p, min-p, then a Gumbel-max
 * categorical draw. A banned id stays -inf through everything after it, so the bans' place among
 * the steps before top-k changes no result.
 */
import { InvalidOptionError } from '../errors.js';
import type { NormalizedSampling } from '../kernels/sampler.js';
import { checkOptions } from './names.js';

export type { NormalizedSampling };

export interface SamplingOptions {
  /** Divides the logits; 0 = greedy (argmax, ties to the smaller id). Default 1. */
  temperature?: number;
  /** Keep the tokens whose logit is >= the k-th largest (ties kept, as HF). 0 = off. */
  topK?: number;
  /** Nucleus sampling: smallest set of most probable tokens reaching p. 0 or 1 = off. */
  topP?: number;
  /** Drop tokens whose probability is < minP * the top probability. 0 = off. */
  minP?: number;
  /** top-k, top-p and min-p never keep fewer tokens than this. Default 1. */
  minTokensToKeep?: number;
  /** Subtracted once per occurrence of a token in the prompt and the output. Default 0. */
  freqPenalty?: number;
  /** Subtracted once from every token present in the prompt or the output. Default 0. */
  presencePenalty?: number;
  /** HF repetition penalty: positive logits of present tokens divided by it, negative ones multiplied. 1 = off. */
  repetitionPenalty?: number;
  /** Token id -> value added to its logit before anything else. */
  logitBias?: Record<number, number>;
  /**
   * transformers' no_repeat_ngram_size: a token that would complete an n-gram already present in
   * prompt + output is banned. 0 = off. Needs the host between steps (pipeline depth 1).
   */
  noRepeatNgramSize?: number;
  /**
   * transformers' bad_words_ids: token sequences never produced. A one-token sequence is always
   * banned; a longer one bans its last token when the ids so far end with the rest. As in
   * transformers, a sequence that is just an EOS id is ignored (use minNewTokens). Multi-token
   * sequences need the host between steps (pipeline depth 1).
   */
  badWordsIds?: number[][];
  /** transformers' suppress_tokens: ids never produced. */
  suppressTokens?: number[];
  /** transformers' min_new_tokens: EOS (and stopTokenIds) banned until this many new tokens. Default 0. */
  minNewTokens?: number;
  /** Integer in [0, 2^53). Default: randomSeed(). */
  seed?: number;
}

/** Every sampling option's name (SamplingOptions' keys). */
export const SAMPLING_OPTIONS: readonly string[] = [
  'temperature',
  'topK',
  'topP',
  'minP',
  'minTokensToKeep',
  'freqPenalty',
  'presencePenalty',
  'repetitionPenalty',
  'logitBias',
  'noRepeatNgramSize',
  'badWordsIds',
  'suppressTokens',
  'minNewTokens',
  'seed',
];

function bad(name: string, value: unknown, domain: string): never {
  throw new InvalidOptionError(`sampling option ${name} = ${String(value)} is invalid: must be ${domain}`);
}

function num(
  o: Record<string, unknown>,
  name: string,
  dflt: number,
  domain: string,
  ok: (x: number) => boolean,
): number {
  const v = o[name];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) bad(name, v, domain);
  return v;
}

/**
 * Checks every option against its domain and fills in the defaults. Throws InvalidOptionError
 * naming the option, its value and the allowed domain (unknown keys are named too).
 */
export function validateSampling(opts: SamplingOptions | undefined, vocab: number): NormalizedSampling {
  const o = checkOptions(opts as Record<string, unknown> | undefined, SAMPLING_OPTIONS, 'sampling option');
  const isInt = Number.isInteger;
  const temperature = num(o, 'temperature', 1, 'a finite number >= 0 (0 = greedy)', (x) => x >= 0);
  const topK = num(o, 'topK', 0, 'an integer >= 0 (0 = off)', (x) => x >= 0 && isInt(x));
  const topP = num(o, 'topP', 0, 'in [0, 1] (0 or 1 = off)', (x) => x >= 0 && x <= 1);
  const minP = num(o, 'minP', 0, 'in [0, 1] (0 = off)', (x) => x >= 0 && x <= 1);
  const minTokensToKeep = num(o, 'minTokensToKeep', 1, 'an integer >= 1', (x) => x >= 1 && isInt(x));
  const freqPenalty = num(o, 'freqPenalty', 0, 'a finite number', () => true);
  const presencePenalty = num(o, 'presencePenalty', 0, 'a finite number', () => true);
  const repetitionPenalty = num(o, 'repetitionPenalty', 1, 'a finite number > 0 (1 = off)', (x) => x > 0);
  let seed: number | undefined;
  if (o.seed !== undefined) {
    seed = num(o, 'seed', 0, 'an integer in [0, 2^53)', (x) => isInt(x) && x >= 0 && x < 2 ** 53);
  }
  const logitBias: Array<[number, number]> = [];
  if (o.logitBias !== undefined) {
    if (typeof o.logitBias !== 'object' || o.logitBias === null || Array.isArray(o.logitBias)) {
      bad('logitBias', o.logitBias, 'an object mapping token id -> finite number');
    }
    for (const [k, v] of Object.entries(o.logitBias as Record<string, unknown>)) {
      const id = Number(k);
      if (!isInt(id) || id < 0 || id >= vocab) bad(`logitBias[${k}]`, v, `keyed by a token id in [0, ${vocab})`);
      if (typeof v !== 'number' || !Number.isFinite(v)) bad(`logitBias[${k}]`, v, 'a finite number');
      logitBias.push([id, v]);
    }
    logitBias.sort((a, b) => a[0] - b[0]);
  }
  return {
    temperature,
    topK,
    topP,
    minP,
    minTokensToKeep,
    freqPenalty,
    presencePenalty,
    repetitionPenalty,
    logitBias,
    ...validateBans(o, vocab),
    seed,
  };
}

/** An array of token ids in [0, vocab), validated (`name` names it in the error). */
export function tokenIds(name: string, v: unknown, vocab: number, nonEmpty = false): number[] {
  if (!Array.isArray(v) || (nonEmpty && v.length === 0))
    bad(name, JSON.stringify(v)?.slice(0, 60), `${nonEmpty ? 'a non-empty' : 'an'} array of token ids`);
  v.forEach((id: unknown, i) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocab)
      bad(`${name}[${i}]`, id, `a token id in [0, ${vocab})`);
  });
  return [...(v as number[])];
}

/**
 * The ban options (noRepeatNgramSize, badWordsIds, suppressTokens, minNewTokens), validated with
 * their defaults; beam search takes the same ones.
 */
export function validateBans(
  o: Record<string, unknown>,
  vocab: number,
): Pick<NormalizedSampling, 'noRepeatNgramSize' | 'badWordsIds' | 'suppressTokens' | 'minNewTokens'> {
  const isInt = Number.isInteger;
  const noRepeatNgramSize = num(o, 'noRepeatNgramSize', 0, 'an integer >= 0 (0 = off)', (x) => x >= 0 && isInt(x));
  const minNewTokens = num(o, 'minNewTokens', 0, 'an integer >= 0', (x) => x >= 0 && isInt(x));
  const suppressTokens = o.suppressTokens === undefined ? [] : tokenIds('suppressTokens', o.suppressTokens, vocab);
  let badWordsIds: number[][] = [];
  if (o.badWordsIds !== undefined) {
    if (!Array.isArray(o.badWordsIds))
      bad('badWordsIds', JSON.stringify(o.badWordsIds)?.slice(0, 60), 'an array of token id sequences');
    badWordsIds = o.badWordsIds.map((w: unknown, i) => tokenIds(`badWordsIds[${i}]`, w, vocab, true));
  }
  return { noRepeatNgramSize, badWordsIds, suppressTokens, minNewTokens };
}

// An odd 52-bit constant (the golden ratio's fraction bits): seeds of a batch are spread over the
// whole 2^53 range, so batches started from neighbouring seeds (s, s + 1) do not share sequences.
const SEED_STEP = 0x9e3779b97f4a7n;
const SEED_MOD = 1n << 53n;

/**
 * The seed of sequence `i` of a batch started with `seed`:
 *   deriveSeed(seed, i) = (seed + i * 0x9E3779B97F4A7) mod 2^53.
 * deriveSeed(s, 0) === s, and sequence i of a batch draws exactly what a single run with seed
 * deriveSeed(s, i) draws (the GPU RNG is keyed by the row's seed alone).
 */
export function deriveSeed(seed: number, i: number): number {
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 53) bad('seed', seed, 'an integer in [0, 2^53)');
  if (!Number.isInteger(i) || i < 0) bad('sequence index', i, 'an integer >= 0');
  return Number((BigInt(seed) + BigInt(i) * SEED_STEP) % SEED_MOD);
}

/** A fresh random seed in [0, 2^53) from the platform's CSPRNG. */
export function randomSeed(): number {
  const w = new Uint32Array(2);
  globalThis.crypto.getRandomValues(w);
  return (w[0]! & 0x1fffff) * 2 ** 32 + w[1]!;
}
