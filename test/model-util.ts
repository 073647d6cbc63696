/** Shared model fixtures for engine-level tests: one Engine per test process, models cached. */
import { createEngine } from '../src/node.js';
import type { Engine, Model, PartialProfile } from '../src/engine/engine.js';
import { tinyCheckpoint } from './fixtures-util.js';
import type { GPT2Config } from '../src/engine/config.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { decodeMeta, ForwardPlan, rowMeta } from '../src/engine/model.js';

let engineP: Promise<Engine> | undefined;
export function engine(): Promise<Engine> {
  engineP ??= createEngine();
  return engineP;
}

const models = new Map<string, Promise<Model>>();
/** The HF tiny fixture model (f32 or f16 storage), loaded once per process. */
export function tinyModel(dtype: 'f32' | 'f16' = 'f32'): Promise<Model> {
  const key = `tiny:${dtype}`;
  if (!models.has(key))
    models.set(
      key,
      engine().then(async (e) => e.loadModel(await tinyCheckpoint(), { dtype })),
    );
  return models.get(key)!;
}

/** A random model of the given config (seeded); `profile` is merged over the adapter's device profile. */
export async function randomModel(
  cfg: GPT2Config,
  seed = 0,
  dtype: 'f32' | 'f16' = 'f32',
  profile?: PartialProfile,
): Promise<Model> {
  return (await engine()).loadModel(randomCheckpoint(cfg, seed), { dtype, experimental: { profile } });
}

/** A config for small random models. */
export function cfgOf(over: Partial<GPT2Config>): GPT2Config {
  return {
    vocab_size: 211,
    n_positions: 64,
    n_embd: 48,
    n_layer: 2,
    n_head: 4,
    layer_norm_epsilon: 1e-5,
    activation_function: 'gelu_new',
    bos_token_id: 0,
    eos_token_id: 0,
    n_inner: null,
    ...over,
  } as GPT2Config;
}

/**
 * Prefills `prompt` on a fresh cache, then feeds `fed` one decode step each; every step's logits
 * [V]. With `planTokens` the prompt plan is built for that many tokens and the ones past the prompt
 * parked (a bucketed prompt plan): what they would write to the cache would show in the steps after.
 */
export async function decodeLogits(
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
