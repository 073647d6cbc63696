/**
 * Locating and loading the shared reference fixtures. In CI the repository is a clean clone with
 * `shared/` beside it, so fixtures live at `<repoRoot>/../shared/fixtures` (README there describes
 * them). GPT2_FIXTURES overrides the directory.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bytesSource, serializeSafetensors, TensorToWrite } from '../src/engine/safetensors.js';
import type { GPT2Config } from '../src/engine/config.js';
import { parameterShapes } from '../src/engine/config.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { packF16 } from '../src/kernels/f16.js';
import { Checkpoint, openCheckpoint } from '../src/engine/checkpoint.js';

/** The repository root: this file compiles to <root>/dist/test/fixtures-util.js. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export function fixturesDir(): string {
  const dir = process.env.GPT2_FIXTURES ?? join(REPO_ROOT, '..', 'shared', 'fixtures');
  if (!existsSync(dir))
    throw new Error(
      `reference fixtures not found at ${dir} (expected <repoRoot>/../shared/fixtures, or set GPT2_FIXTURES)`,
    );
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
  return openCheckpoint(
    tinyConfigJson(),
    bytesSource(join(tinyDir(), 'model.safetensors'), tinySafetensorsBytes()),
    tinyDir(),
  );
}

/** A small valid GPT-2 config (V 97, P 16, C 8, L 2, H 2) with optional overrides. */
export function smallConfig(over: Partial<GPT2Config> = {}): GPT2Config {
  return {
    vocab_size: 97,
    n_positions: 16,
    n_embd: 8,
    n_layer: 2,
    n_head: 2,
    layer_norm_epsilon: 1e-5,
    activation_function: 'gelu_new',
    bos_token_id: 0,
    eos_token_id: 0,
    n_inner: null,
    ...over,
  };
}

/** float32 values -> raw little-endian bytes of the given safetensors dtype. */
export function encodeAs(values: Float32Array, dtype: 'F32' | 'F16' | 'BF16'): Uint8Array {
  if (dtype === 'F32')
    return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  if (dtype === 'F16') {
    const w = packF16(values, 1, values.length); // pairs of halves in u32 words, LE = consecutive halves
    return new Uint8Array(w.buffer, 0, values.length * 2);
  }
  const out = new Uint16Array(values.length); // bf16: truncate f32 bits (exact for values made this way)
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) out[i] = bits[i]! >>> 16;
  return new Uint8Array(out.buffer);
}

export interface MakeOpts {
  seed?: number;
  dtype?: 'F32' | 'F16' | 'BF16';
  prefix?: boolean; // add `transformer.` (as HF's save_pretrained does)
  omit?: string[]; // canonical names to leave out
  reshape?: Record<string, number[]>; // canonical name -> shape written instead (data sized to match)
  extra?: TensorToWrite[];
}

/**
 * A safetensors file for `cfg` filled with the random checkpoint's values (so tests can compare),
 * with optional defects. Returns the bytes and the f32 values written (after dtype rounding).
 */
export async function makeSafetensors(
  cfg: GPT2Config,
  o: MakeOpts = {},
): Promise<{ bytes: Uint8Array; values: Map<string, Float32Array> }> {
  const ck = randomCheckpoint(cfg, o.seed ?? 1);
  const dtype = o.dtype ?? 'F32';
  const list: TensorToWrite[] = [];
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of parameterShapes(cfg)) {
    if (o.omit?.includes(name)) continue;
    const s = o.reshape?.[name] ?? shape;
    let v = await ck.read(name);
    const n = s.reduce((a, b) => a * b, 1);
    if (v.length !== n) v = v.length > n ? v.slice(0, n) : Float32Array.from({ length: n }, (_, i) => v[i % v.length]!);
    if (dtype === 'BF16') v = new Float32Array(new Uint32Array(v.buffer.slice(0)).map((b) => b & 0xffff0000).buffer);
    const data = encodeAs(v, dtype);
    list.push({ name: (o.prefix ? 'transformer.' : '') + name, dtype, shape: s, data });
    values.set(name, v);
  }
  list.push(...(o.extra ?? []));
  return { bytes: serializeSafetensors(list, { format: 'pt' }), values };
}

/** Awaits `p` and fails unless it rejects with an instance of `cls` whose message matches `pattern`. */
export async function rejectsWith(
  p: Promise<unknown>,
  cls: new (...a: never[]) => Error,
  pattern: RegExp,
): Promise<Error> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof cls))
      throw new Error(`expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`, { cause: e });
    if (!pattern.test(e.message))
      throw new Error(`${cls.name} message ${JSON.stringify(e.message)} does not match ${pattern}`, { cause: e });
    return e;
  }
  throw new Error(`expected a ${cls.name} matching ${pattern}, but it resolved`);
}
