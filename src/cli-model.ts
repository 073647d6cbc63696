/**
 * What the model-loading commands share: the model, sampling, prompt and JSON flags, the sampling
 * options read from them, the load progress line and the load-run-destroy wrapper.
 */
import { createEngine } from './node.js';
import { num, oneOf, parseIds, UsageError, type Flag, type Values } from './cli-args.js';
import type { Model } from './engine/engine.js';
import type { LoadProgress } from './engine/engine-options.js';
import { KV_DTYPES, type KvDtype } from './engine/kvcache.js';
import { validateSampling, type SamplingOptions } from './sampling/options.js';
import { InvalidOptionError } from './errors.js';
import { WEIGHT_DTYPES, type WeightDType } from './engine/weights.js';

export const MODEL_FLAGS: Record<string, Flag> = {
  model: {
    type: 'string',
    help: 'model source: random:<gpt2|gpt2-medium|gpt2-large|gpt2-xl|distilgpt2|config.json>, a local directory (config.json + model.safetensors), or a Hugging Face id (gpt2, openai-community/gpt2-medium, ...)',
  },
  dtype: {
    type: 'string',
    help: 'weight storage: f32 (default), f16, q8 (int8 per output channel) or q4 (int4 per 32 inputs); math stays f32',
  },
  f16: { type: 'boolean', default: false, help: 'the same as --dtype f16' },
  'kv-dtype': {
    type: 'string',
    default: 'f32',
    help: 'KV cache storage: f32, or f16 (half the cache memory; math stays f32; head size a multiple of 8)',
  },
  'weights-seed': { type: 'string', default: '0', help: 'seed of random: weights' },
};
/** Hard bans (transformers' semantics), shared by generate and beam. */
export const BAN_FLAGS: Record<string, Flag> = {
  'no-repeat-ngram-size': {
    type: 'string',
    help: "no n-gram of this size occurs twice in prompt + output (transformers' no_repeat_ngram_size); 0 = off",
  },
  'min-new-tokens': { type: 'string', help: 'EOS (and stop token ids) banned until this many new tokens' },
  'suppress-tokens': { type: 'string', help: 'comma-separated token ids never generated' },
  'bad-words': {
    type: 'string',
    multiple: true,
    help: 'a comma-separated token-id sequence never generated (give --bad-words more than once for several)',
  },
};

/** The ban options of the flags (ids checked against the vocabulary by the engine, before any GPU work). */
export function bansFrom(
  v: Values,
): Pick<SamplingOptions, 'noRepeatNgramSize' | 'minNewTokens' | 'suppressTokens' | 'badWordsIds'> {
  const o: ReturnType<typeof bansFrom> = {};
  if (v['no-repeat-ngram-size'] !== undefined)
    o.noRepeatNgramSize = num(v['no-repeat-ngram-size'], 'no-repeat-ngram-size', { int: true, min: 0 });
  if (v['min-new-tokens'] !== undefined)
    o.minNewTokens = num(v['min-new-tokens'], 'min-new-tokens', { int: true, min: 0 });
  if (v['suppress-tokens'] !== undefined) o.suppressTokens = parseIds(String(v['suppress-tokens']), 'suppress-tokens');
  if (v['bad-words'] !== undefined) o.badWordsIds = (v['bad-words'] as string[]).map((w) => parseIds(w, 'bad-words'));
  return o;
}

export const SAMPLING_FLAGS: Record<string, Flag> = {
  temperature: { type: 'string', default: '1', help: 'softmax temperature; 0 = greedy (argmax, ties -> smallest id)' },
  'top-k': { type: 'string', default: '0', help: 'keep the k most likely tokens (ties at the k-th kept); 0 = off' },
  'top-p': {
    type: 'string',
    default: '0',
    help: 'nucleus: keep the smallest most-likely set reaching p; 0 or 1 = off',
  },
  'min-p': {
    type: 'string',
    default: '0',
    help: 'drop tokens with probability < min_p x the top probability; 0 = off',
  },
  'min-tokens-to-keep': { type: 'string', default: '1', help: 'top-p / min-p keep at least this many tokens' },
  'freq-penalty': { type: 'string', default: '0', help: 'subtract this x (count of the token in prompt + output)' },
  'presence-penalty': { type: 'string', default: '0', help: 'subtract this once for every token already present' },
  'repetition-penalty': {
    type: 'string',
    default: '1',
    help: 'HF repetition penalty (divide positive / multiply negative logits of present tokens); 1 = off',
  },
  seed: { type: 'string', help: 'RNG seed (integer); default: random, reported in the output' },
};
export const PROMPT_FLAGS: Record<string, Flag> = {
  prompt: { type: 'string', help: 'prompt text' },
  ids: { type: 'string', help: 'prompt as comma-separated token ids' },
};
export const JSON_FLAG: Record<string, Flag> = {
  json: { type: 'boolean', default: false, help: 'print one JSON object' },
};

/** The sampling flags and the SamplingOptions key each sets. */
export const SAMPLING_KEYS: Array<[flag: string, key: keyof SamplingOptions]> = [
  ['temperature', 'temperature'],
  ['top-k', 'topK'],
  ['top-p', 'topP'],
  ['min-p', 'minP'],
  ['min-tokens-to-keep', 'minTokensToKeep'],
  ['freq-penalty', 'freqPenalty'],
  ['presence-penalty', 'presencePenalty'],
  ['repetition-penalty', 'repetitionPenalty'],
  ['seed', 'seed'],
];

/**
 * The sampling options of the flags, each checked against its domain by the engine's own
 * validateSampling (so the CLI and the API agree) before anything is loaded; a value outside it is
 * a usage error naming the flag and the rule.
 */
export function samplingFrom(v: Values): SamplingOptions {
  const s: Record<string, number> = {};
  for (const [flag, key] of SAMPLING_KEYS) {
    if (v[flag] === undefined) continue;
    const x = num(v[flag], flag);
    try {
      validateSampling({ [key]: x }, 1);
    } catch (e) {
      if (!(e instanceof InvalidOptionError)) throw e;
      const rule = /is invalid: (.*)$/.exec(e.message)?.[1] ?? e.message;
      throw new UsageError(`--${flag} ${rule}, got "${String(v[flag])}"`);
    }
    s[key] = x;
  }
  return { ...(s as SamplingOptions), ...bansFrom(v) };
}

/** What each load phase is doing, as the progress lines name it. */
const PHASES: Record<string, string> = {
  download: 'download',
  compile: 'compile (GPU pipelines)',
  upload: 'upload (weights to the GPU)',
};

/**
 * A progress reporter on stderr: a redrawn bar on a terminal, a line every 10% otherwise. The
 * compile phase has no byte counts (its pipelines are built together): a line when it starts and
 * one with its duration when it ends.
 */
export function progress(): (p: LoadProgress) => void {
  // bin/gpt2-webgpu.js runs the CLI with stderr through a pipe (it drops Dawn's start-up
  // warnings) and says so when its own stderr is a terminal.
  const tty = Boolean(process.stderr.isTTY) || process.env.GPT2_WEBGPU_STDERR_TTY === '1';
  let lastPct = -1;
  let lastPhase = '';
  let compileStart = 0;
  return (p) => {
    const label = PHASES[p.phase] ?? p.phase;
    if (p.phase === 'compile') {
      const done = p.loaded >= p.total;
      if (!done) compileStart = Date.now();
      const secs = ((Date.now() - compileStart) / 1000).toFixed(1);
      process.stderr.write(
        tty
          ? `\r${`${label}: ${done ? `done in ${secs} s` : 'building...'}`.padEnd(44)}${done ? '\n' : ''}`
          : `${label}: ${done ? `done in ${secs} s` : 'building'}\n`,
      );
      lastPhase = p.phase;
      return;
    }
    const pct = p.total > 0 ? Math.floor((100 * p.loaded) / p.total) : 0;
    if (tty) {
      const w = 30;
      const fill = Math.round((w * pct) / 100);
      process.stderr.write(
        `\r${label} [${'#'.repeat(fill)}${'.'.repeat(w - fill)}] ${String(pct).padStart(3)}% ${(p.loaded / 1e6).toFixed(1)}/${(p.total / 1e6).toFixed(1)} MB`,
      );
      if (p.loaded >= p.total) process.stderr.write('\n');
    } else if (p.phase !== lastPhase || Math.floor(pct / 10) !== Math.floor(lastPct / 10)) {
      process.stderr.write(`${label}: ${pct}% (${(p.loaded / 1e6).toFixed(1)} of ${(p.total / 1e6).toFixed(1)} MB)\n`);
    }
    lastPct = pct;
    lastPhase = p.phase;
  };
}

/**
 * Loads --model and runs `fn` on it. Commands read and check all their other flags before calling
 * this, so that a bad value is refused before any download or upload.
 */
export async function withModel<T>(v: Values, fn: (m: Model) => Promise<T>): Promise<T> {
  if (typeof v.model !== 'string' || !v.model)
    throw new UsageError('--model is required (e.g. --model random:gpt2, --model gpt2, --model ./my-gpt2-dir)');
  const seed = num(v['weights-seed'], 'weights-seed', { int: true, min: 0 });
  const dtype = dtypeFrom(v);
  const kvDtype = kvDtypeFlag(v);
  const engine = await createEngine();
  try {
    const model = await engine.loadModel(v.model, {
      dtype,
      kvDtype,
      seed,
      onProgress: progress(),
    });
    return await fn(model);
  } finally {
    engine.destroy();
  }
}

/** --kv-dtype, checked before anything is loaded: a UsageError listing the values. */
export function kvDtypeFlag(v: Values): KvDtype {
  return oneOf(v['kv-dtype'] ?? 'f32', 'kv-dtype', KV_DTYPES);
}

/** --dtype (or --f16, its alias for f16), checked before anything is loaded: a UsageError listing the values. */
export function dtypeFrom(v: Values): WeightDType {
  const d = oneOf(v.dtype ?? (v.f16 ? 'f16' : 'f32'), 'dtype', WEIGHT_DTYPES);
  if (v.f16 && d !== 'f16') throw new UsageError(`--f16 means --dtype f16, but --dtype ${d} was given`);
  return d;
}

export function promptFrom(v: Values): string | number[] {
  if (v.prompt !== undefined && v.ids !== undefined) throw new UsageError('give either --prompt or --ids, not both');
  if (typeof v.ids === 'string') return parseIds(v.ids);
  if (typeof v.prompt === 'string') return v.prompt;
  throw new UsageError('a prompt is required: --prompt TEXT or --ids 1,2,3');
}
