/**
 * A Checkpoint is a validated GPT-2 config plus lazy access to its tensors by HF name (without the
 * `transformer.` prefix). Everything is checked before any GPU work starts: every expected tensor is
 * present with the expected shape and a loadable dtype, so a bad file fails with WeightsFormatError
 * and not half-way through an upload.
 *
 * Ignored tensors: `h.N.attn.bias` / `h.N.attn.masked_bias` (causal-mask buffers older exports
 * saved) and `lm_head.weight` (GPT-2's LM head is tied to wte; a config with tie_word_embeddings =
 * false is refused by parseConfig). Other extra tensors are ignored too, except layers past n_layer,
 * which mean the config and the file disagree.
 */
import { DownloadError, WeightsFormatError } from '../errors.js';
import { GPT2Config, parameterShapes, parseConfig } from './config.js';
import {
  ByteSource,
  parseSafetensors,
  preview,
  shapeText,
  readRowsF32,
  readTensorF32,
  READABLE_DTYPES,
  SafetensorsFile,
} from './safetensors.js';

export interface Checkpoint {
  config: GPT2Config;
  /** Where it came from, for messages: a path, a hub id, `random:gpt2`. */
  source: string;
  has(name: string): boolean;
  /** Shape of a tensor (a copy); throws WeightsFormatError for unknown names. */
  shape(name: string): number[];
  /** The whole tensor as float32. */
  read(name: string): Promise<Float32Array>;
  /** Rows [start, start + count) along the first dimension, as float32 (for chunked uploads). */
  readRows(name: string, start: number, count: number): Promise<Float32Array>;
}

const PREFIX = 'transformer.';

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * Checks that the tensors `shapeOf` knows (by canonical name) include every tensor `cfg` needs with
 * its exact shape, and that `names` has no layer past n_layer. Throws WeightsFormatError naming the
 * first missing tensor or shape mismatch.
 */
export function validateTensors(
  cfg: GPT2Config,
  shapeOf: (name: string) => number[] | undefined,
  names: Iterable<string>,
  where: string,
): void {
  for (const [name, want] of parameterShapes(cfg)) {
    const got = shapeOf(name);
    if (!got) {
      throw new WeightsFormatError(
        `${where}: missing tensor "${name}" (expected shape [${want.join(', ')}] for n_layer ${cfg.n_layer}, n_embd ${cfg.n_embd})`,
      );
    }
    if (!sameShape(got, want)) {
      throw new WeightsFormatError(
        `${where}: tensor "${name}" has shape ${shapeText(got)} but the config needs [${want.join(', ')}]`,
      );
    }
  }
  for (const name of names) {
    const m = /^h\.(\d+)\./.exec(name);
    if (m && Number(m[1]) >= cfg.n_layer) {
      throw new WeightsFormatError(
        `${where}: tensor ${preview(name)} belongs to layer ${preview(Number(m[1]))} but the config has n_layer ${cfg.n_layer}`,
      );
    }
  }
}

/** True for tensors a GPT-2 file may carry that this engine does not use. */
function ignored(name: string): boolean {
  return name === 'lm_head.weight' || /^h\.\d+\.attn\.(masked_)?bias$/.test(name);
}

/**
 * A Checkpoint over parsed safetensors files: one model.safetensors, or the shards of a sharded
 * checkpoint (every tensor in exactly one of them).
 */
export function checkpointFromSafetensors(
  config: GPT2Config,
  file: SafetensorsFile | readonly SafetensorsFile[],
  source: string,
): Checkpoint {
  const files = Array.isArray(file) ? (file as readonly SafetensorsFile[]) : [file as SafetensorsFile];
  const where = files.length === 1 ? files[0]!.source.name : source;
  // canonical name -> the file and key holding it
  const keys = new Map<string, { file: SafetensorsFile; key: string }>();
  for (const f of files)
    for (const key of f.tensors.keys()) {
      const name = key.startsWith(PREFIX) ? key.slice(PREFIX.length) : key;
      if (ignored(name)) continue;
      const other = keys.get(name);
      if (other !== undefined) {
        const at = (x: { file: SafetensorsFile; key: string }) =>
          files.length === 1 ? preview(x.key) : `${preview(x.key)} in ${x.file.source.name}`;
        throw new WeightsFormatError(
          `${where}: tensor ${preview(name)} appears twice (as ${at(other)} and ${at({ file: f, key })})`,
        );
      }
      keys.set(name, { file: f, key });
    }
  const info = (name: string) => {
    const k = keys.get(name);
    return k === undefined ? undefined : k.file.tensors.get(k.key);
  };
  validateTensors(config, (n) => info(n)?.shape, keys.keys(), where);
  for (const name of parameterShapes(config).keys()) {
    const t = info(name)!;
    if (!(READABLE_DTYPES as readonly string[]).includes(t.dtype)) {
      throw new WeightsFormatError(
        `${keys.get(name)!.file.source.name}: tensor ${preview(t.name)} has dtype ${t.dtype}; only ${READABLE_DTYPES.join(', ')} can be loaded`,
      );
    }
  }
  const need = (name: string): { file: SafetensorsFile; key: string } => {
    const k = keys.get(name);
    if (k === undefined) throw new WeightsFormatError(`${source}: no tensor "${name}"`);
    return k;
  };
  return {
    config,
    source,
    has: (name) => keys.has(name),
    shape: (name) => {
      const k = need(name);
      return k.file.tensors.get(k.key)!.shape.slice();
    },
    read: (name) => {
      const k = need(name);
      return readTensorF32(k.file, k.key);
    },
    readRows: (name, start, count) => {
      const k = need(name);
      return readRowsF32(k.file, k.key, start, count);
    },
  };
}

/**
 * Opens a checkpoint from a parsed config.json and a safetensors ByteSource, validating both.
 * `sourceName` names the model in messages (a directory, a hub id, a URL).
 */
export async function openCheckpoint(configJson: unknown, st: ByteSource, sourceName: string): Promise<Checkpoint> {
  const config = parseConfig(configJson, `${sourceName} config.json`);
  const file = await parseSafetensors(st);
  return checkpointFromSafetensors(config, file, sourceName);
}

/** The index file of a sharded checkpoint (transformers' save_pretrained past max_shard_size). */
export const SHARD_INDEX = 'model.safetensors.index.json';

/** The most shards an index may name (gpt2-xl in f32 is 6.2 GB: 2 shards at 5 GB). */
const MAX_SHARDS = 1000;

/**
 * The shard files a model.safetensors.index.json names: the distinct values of its weight_map, in
 * the order they first appear. Each must be a plain .safetensors file name in the index's own
 * folder (no path: a hostile index must not reach other files).
 */
export function shardFiles(indexJson: unknown, where: string): string[] {
  const map = (indexJson as { weight_map?: unknown } | null)?.weight_map;
  if (
    typeof indexJson !== 'object' ||
    indexJson === null ||
    typeof map !== 'object' ||
    map === null ||
    Array.isArray(map)
  )
    throw new WeightsFormatError(`${where}: not a sharded-checkpoint index (an object with a "weight_map" object)`);
  const out: string[] = [];
  for (const [tensor, file] of Object.entries(map)) {
    if (typeof file !== 'string' || !/^[\w][\w.-]*\.safetensors$/.test(file) || file.includes('..'))
      throw new WeightsFormatError(
        `${where}: weight_map[${preview(tensor)}] is ${preview(file)}; shards are .safetensors file names beside the index`,
      );
    if (!out.includes(file)) out.push(file);
    if (out.length > MAX_SHARDS) throw new WeightsFormatError(`${where}: more than ${MAX_SHARDS} shard files`);
  }
  if (out.length === 0) throw new WeightsFormatError(`${where}: the weight_map is empty`);
  return out;
}

/**
 * Opens a sharded checkpoint: config.json, the index, and each shard it names through `openShard`
 * (a file beside the index). Every shard's header is read and checked before any GPU work.
 */
export async function openShardedCheckpoint(
  configJson: unknown,
  indexJson: unknown,
  openShard: (file: string) => Promise<ByteSource>,
  sourceName: string,
): Promise<Checkpoint> {
  const config = parseConfig(configJson, `${sourceName} config.json`);
  const files: SafetensorsFile[] = [];
  for (const name of shardFiles(indexJson, `${sourceName} ${SHARD_INDEX}`))
    files.push(await parseSafetensors(await openShard(name)));
  return checkpointFromSafetensors(config, files, sourceName);
}

/**
 * A downloaded folder's checkpoint: `single()` (model.safetensors), or, when that file is missing
 * (DownloadError.missing), the sharded one `sharded` opens from the index `index()` reads. With no
 * index either, the first error stands (it names model.safetensors).
 */
export async function singleOrSharded(
  single: () => Promise<Checkpoint>,
  index: () => Promise<unknown>,
  sharded: (indexJson: unknown) => Promise<Checkpoint>,
): Promise<Checkpoint> {
  const missing = (e: unknown): boolean => e instanceof DownloadError && e.missing;
  try {
    return await single();
  } catch (e) {
    if (!missing(e)) throw e;
    let json: unknown;
    try {
      json = await index();
    } catch (e2) {
      throw missing(e2) ? e : e2;
    }
    return sharded(json);
  }
}

/**
 * A Checkpoint a caller built (loadModel takes any object with `config` and `read`), checked as a
 * file would be before any GPU work: its config parsed, every tensor present with its shape; and
 * what its `read` / `readRows` return must be a Float32Array of the tensor's (rows') size, or the
 * upload stops with a WeightsFormatError naming the tensor.
 */
export function checkedCheckpoint(ck: Checkpoint): Checkpoint {
  const source = typeof ck.source === 'string' ? ck.source : 'checkpoint';
  const config = parseConfig(ck.config, `${source} config`);
  for (const f of ['has', 'shape', 'read', 'readRows'] as const)
    if (typeof ck[f] !== 'function') throw new WeightsFormatError(`${source}: a Checkpoint needs a ${f}() function`);
  // (It lists no names of its own: only the expected ones are asked for.)
  validateTensors(config, (n) => (ck.has(n) ? ck.shape(n) : undefined), [], source);
  const checked = (name: string, what: string, want: number, got: unknown): Float32Array => {
    if (!(got instanceof Float32Array) || got.length !== want)
      throw new WeightsFormatError(
        `${source}: ${what} of tensor "${name}" must be a Float32Array of ${want} values, got ${got instanceof Float32Array ? `${got.length} values` : Array.isArray(got) ? 'an array' : typeof got}`,
      );
    return got;
  };
  const size = (name: string) => ck.shape(name).reduce((a, b) => a * b, 1);
  const rowLen = (name: string) => {
    const s = ck.shape(name);
    return s.length > 1 ? s.slice(1).reduce((a, b) => a * b, 1) : 1;
  };
  return {
    config,
    source,
    has: (name) => ck.has(name),
    shape: (name) => ck.shape(name),
    read: async (name) => checked(name, 'read()', size(name), await ck.read(name)),
    readRows: async (name, start, count) =>
      checked(name, `readRows(${start}, ${count})`, count * rowLen(name), await ck.readRows(name, start, count)),
  };
}

/** A Checkpoint over float32 arrays in memory (tests, converted weights). Validated like a file. */
export function checkpointFromArrays(
  config: GPT2Config,
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  source = 'memory',
): Checkpoint {
  for (const [name, t] of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.data.length !== n)
      throw new WeightsFormatError(
        `${source}: tensor "${name}" has ${t.data.length} values but shape ${shapeText(t.shape)} needs ${n}`,
      );
  }
  validateTensors(config, (n) => tensors.get(n)?.shape, tensors.keys(), source);
  const get = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new WeightsFormatError(`${source}: no tensor "${name}"`);
    return t;
  };
  return {
    config,
    source,
    has: (name) => tensors.has(name),
    shape: (name) => get(name).shape.slice(),
    read: async (name) => get(name).data.slice(),
    readRows: async (name, start, count) => {
      const t = get(name);
      const row = t.shape.slice(1).reduce((a, b) => a * b, 1);
      if (start < 0 || count < 0 || start + count > (t.shape[0] ?? 1)) {
        throw new WeightsFormatError(
          `${source}: tensor "${name}" ${shapeText(t.shape)}: rows [${start}, ${start + count}) out of range`,
        );
      }
      return t.data.slice(start * row, (start + count) * row);
    },
  };
}
