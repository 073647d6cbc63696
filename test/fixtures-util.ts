/**
 * Locating and loading the shared reference fixtures. In CI the repository is a clean clone with
 * `shared/` beside it, so fixtures live at `<repoRoot>/../shared/fixtures` (README there describes
 * them). GPT2_FIXTURES overrides the directory.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bytesSource } from '../src/engine/safetensors.js';
import { Checkpoint, openCheckpoint } from '../src/engine/checkpoint.js';

/** The repository root: this file compiles to <root>/dist/test/fixtures-util.js. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export function fixturesDir(): string {
  const dir = process.env.GPT2_FIXTURES ?? join(REPO_ROOT, '..', 'shared', 'fixtures');
  if (!existsSync(dir)) throw new Error(`reference fixtures not found at ${dir} (expected <repoRoot>/../shared/fixtures, or set GPT2_FIXTURES)`);
  return dir;
}

/** Directory of the tiny HF GPT-2 (config.json, model.safetensors, reference.json). */
export function tinyDir(): string {
  return join(fixturesDir(), 'hf-gpt2-tiny');
}

export interface BeamRef {
  sequences: number[][];
  scores: number[];
}

export interface PromptRef {
  text: string;
  ids: number[];
  last_logits_f32_b64: string;
  all_logits_f32_b64?: string;
  greedy48: number[];
  greedy48_step_top5: Array<[number[], number[]]>;
  'beam_nb6_nr2_max20_lp0.0': BeamRef;
  'beam_nb4_nr4_max12_lp1.0': BeamRef;
  warpers: Record<string, { kept: number[]; probs_of_kept: number[] }>;
}

export interface TinyReference {
  config: Record<string, unknown>;
  storage_dtype: string;
  prompts: PromptRef[];
}

let cached: TinyReference | undefined;
/** reference.json of hf-gpt2-tiny (parsed once per process). */
export function tinyReference(): TinyReference {
  cached ??= JSON.parse(readFileSync(join(tinyDir(), 'reference.json'), 'utf8')) as TinyReference;
  return cached;
}

/** Decodes base64 little-endian float32 data. */
export function decodeF32(b64: string): Float32Array {
  const buf = Buffer.from(b64, 'base64');
  const out = new Float32Array(buf.byteLength / 4);
  new Uint8Array(out.buffer).set(buf);
  return out;
}

/** Raw config.json of the tiny model. */
export function tinyConfigJson(): unknown {
  return JSON.parse(readFileSync(join(tinyDir(), 'config.json'), 'utf8'));
}

/** Raw bytes of the tiny model.safetensors (13.5 MB). */
export function tinySafetensorsBytes(): Uint8Array {
  return new Uint8Array(readFileSync(join(tinyDir(), 'model.safetensors')));
}

/** The tiny model as a Checkpoint (bytes held in memory). */
export function tinyCheckpoint(): Promise<Checkpoint> {
  return openCheckpoint(tinyConfigJson(), bytesSource(join(tinyDir(), 'model.safetensors'), tinySafetensorsBytes()), tinyDir());
}
