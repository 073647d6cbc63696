/** Shared model fixtures for engine-level tests: one Engine per test process, models cached. */
import { createEngine } from '../src/node.js';
import type { Engine, Model, ModelLoadOptions } from '../src/engine/engine.js';
import { tinyCheckpoint } from './fixtures-util.js';
import type { GPT2Config } from '../src/engine/config.js';
import { randomCheckpoint } from '../src/engine/random.js';

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

/** A random model of the given config (seeded); `attention` overrides the attention kernel's choices. */
export async function randomModel(
  cfg: GPT2Config,
  seed = 0,
  dtype: 'f32' | 'f16' = 'f32',
  attention?: ModelLoadOptions['attention'],
): Promise<Model> {
  return (await engine()).loadModel(randomCheckpoint(cfg, seed), { dtype, attention });
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
