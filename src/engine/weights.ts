/**
 * Uploads a validated Checkpoint to the GPU, tensor by tensor (the model is never held in CPU
 * memory at once: at most one tensor, or one wte chunk, converted at a time).
 *
 * Layout (see ARCHITECTURE.md): matrices (wte, wpe, the Conv1D weights [in, out]) in the chosen
 * dtype, f16 packed in pairs along the last dimension; biases and layer-norm parameters always f32.
 * q8 / q4 quantize wte and the Conv1D weights on the way (kernels/quant.ts: integers packed along
 * the stored last dimension, f32 scales in a buffer of their own, GpuTensor.scales) and store wpe
 * as f16 (1.5 MB for gpt2; its rows are added, never multiplied, so it gains nothing from scales).
 * wte is split by rows into a ChunkedTensor so each chunk binding fits maxStorageBufferBindingSize
 * (gpt2's 50257 x 768 f32 is 154 MB; lavapipe and browsers allow 128 MiB); with `knPanel` (the CPU
 * profiles) each chunk is stored transposed in column panels, what the LM head reads fastest
 * there. Every other tensor must fit one binding; this is checked for the whole model before the
 * first buffer is made.
 *
 * GPU out-of-memory (caught with an 'out-of-memory' error scope around each buffer) destroys what
 * was uploaded and throws OutOfMemoryError.
 */
import { InvalidOptionError, OutOfMemoryError, ShapeError, WeightsFormatError } from '../errors.js';
import type { ChunkedTensor, GpuTensor } from '../gpu/common.js';
import { isPanelWidth, storedBytes, tensorBytes } from '../gpu/common.js';
import { scaleGroups, scaleStride, type QuantDType } from '../kernels/quant.js';
import { alignedRows, packMatrix, packWteRows } from '../kernels/matmul-pack.js';
import type { Checkpoint } from './checkpoint.js';
import type { GPT2Config } from './config.js';
import type { GpuContext } from '../gpu/device.js';

export type WeightDType = 'f32' | 'f16' | 'q8' | 'q4';
export const WEIGHT_DTYPES: readonly WeightDType[] = ['f32', 'f16', 'q8', 'q4'];

export interface NormWeights {
  weight: GpuTensor; // [C] f32
  bias: GpuTensor; // [C] f32
}
export interface LinearWeights {
  weight: GpuTensor; // [in, out] f32, f16, q8 or q4 (with its scales)
  bias: GpuTensor; // [out] f32
}
export interface LayerWeights {
  ln_1: NormWeights;
  attn: { c_attn: LinearWeights; c_proj: LinearWeights }; // [C, 3C], [C, C]
  ln_2: NormWeights;
  mlp: { c_fc: LinearWeights; c_proj: LinearWeights }; // [C, 4C], [4C, C]
}

export interface GPT2Weights {
  config: GPT2Config;
  wte: ChunkedTensor; // [V, C] in row chunks; also the tied LM head
  wpe: GpuTensor; // [P, C]
  h: LayerWeights[];
  ln_f: NormWeights;
  dtype: WeightDType;
  /** GPU bytes held by all weight buffers. */
  bytes: number;
  /** Destroys every weight buffer (idempotent). */
  destroy(): void;
}

export interface UploadProgress {
  /** Bytes uploaded so far / in total (GPU storage bytes, after f16 or integer packing, scales included). */
  loadedBytes: number;
  totalBytes: number;
  /** The tensor just uploaded (HF name; wte chunks as `wte.weight[rows a..b)`). */
  tensor: string;
}

export interface UploadOptions {
  /** Storage of the matrices; default 'f32'. Biases and layer norms are always f32. */
  dtype?: WeightDType;
  onProgress?: (p: UploadProgress) => void;
  /** Lower the per-binding limit below the adapter's (tests exercise wte chunking with it). */
  maxBindingBytes?: number;
  /**
   * Store the Conv1D matrices (c_attn, c_proj, c_fc: [in, out]) in column panels of this many
   * columns (GpuTensor.panel, packPanels), the layout the matmul kernel reads fastest on CPU
   * adapters (the device profile's matmul.panel); only those whose rows are 16-byte aligned (alignedRows), the
   * others stay plain. wte, the tied LM head, is then stored transposed in panels too
   * (ChunkedTensor.transposed): the LM head reads it as a [C, V] 'kn' weight. Default 0: plain
   * row-major everywhere.
   */
  knPanel?: number;
}

const USAGE = 0x80 | 0x8 | 0x4; // STORAGE | COPY_DST | COPY_SRC (COPY_SRC: read-back in tests/debug)

/** The row granularity of wte chunks: keeps chunk boundaries on matmul tile edges. */
export const WTE_CHUNK_ROW_MULTIPLE = 64;

/**
 * Rows of a [rows, cols] `dtype` matrix per chunk so that one chunk is at most `limit` bytes: all
 * rows if they fit, else the largest multiple of WTE_CHUNK_ROW_MULTIPLE that fits (or the largest
 * count that fits, when even that multiple is too big). Throws ShapeError if one row does not fit.
 * With `panel` (chunks stored transposed in panels of that many rows) a multiple of `panel`, each
 * chunk counted with its zero-padded last panel.
 */
export function wteRowsPerChunk(rows: number, cols: number, dtype: WeightDType, limit: number, panel = 0): number {
  if (panel > 0) {
    const panelBytes = tensorBytes([cols, panel], dtype);
    if (Math.ceil(rows / panel) * panelBytes <= limit) return rows;
    const fit = Math.floor(limit / panelBytes);
    if (fit < 1)
      throw new ShapeError(
        `wte.weight: one panel of ${panel} rows x ${cols} ${dtype} is ${panelBytes} bytes, more than the binding limit ${limit}; use a smaller knPanel`,
      );
    return fit * panel;
  }
  const rowBytes = tensorBytes([1, cols], dtype);
  if (rows * rowBytes <= limit) return rows;
  const fit = Math.floor(limit / rowBytes);
  if (fit < 1)
    throw new ShapeError(
      `wte.weight: one row of ${cols} ${dtype} is ${rowBytes} bytes, more than the binding limit ${limit}`,
    );
  return fit >= WTE_CHUNK_ROW_MULTIPLE ? fit - (fit % WTE_CHUNK_ROW_MULTIPLE) : fit;
}

/** The smallest magnitude f16 storage rounds to infinity (65504 is the largest half). */
const F16_OVERFLOW = 65520;

/**
 * Refuses a tensor holding NaN or +-Infinity, or (stored as `dtype` f16) a value past the half
 * range, with WeightsFormatError naming the tensor, the element and the value: such weights make
 * every logit NaN, which the sampler would turn into token 0 and beam search into NaN scores
 * without a word. `offset`: the index of values[0] in the tensor (a wte chunk). One comparison
 * pair per element: ~3 ms per million.
 */
export function checkFinite(
  source: string,
  name: string,
  values: Float32Array,
  offset = 0,
  dtype: WeightDType = 'f32',
): void {
  const lim = dtype === 'f16' ? F16_OVERFLOW : Infinity;
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    if (x > -lim && x < lim) continue;
    const why =
      x - x === 0
        ? `, past the range of f16 storage (+-65504); load it with dtype 'f32'`
        : '; the weights must be finite (a corrupt or overflowed checkpoint?)';
    throw new WeightsFormatError(`${source}: tensor "${name}" holds ${x} at element ${offset + i}${why}`);
  }
}

function isMatrix(name: string): boolean {
  return name === 'wpe.weight' || isConv1D(name);
}

function isConv1D(name: string): boolean {
  return /\.(c_attn|c_proj|c_fc)\.weight$/.test(name);
}

/** Bytes of the scales of a quantized K x N weight (0 for f32 / f16). */
function scaleBytes(dtype: WeightDType, K: number, N: number): number {
  return dtype === 'q8' || dtype === 'q4' ? scaleGroups(dtype, K) * scaleStride(N) * 4 : 0;
}

/** What an error about size suggests: a smaller storage. */
function sizeHint(dtype: WeightDType): string {
  if (dtype === 'q8' || dtype === 'q4') return '';
  return ` Try ${dtype === 'f32' ? 'f16 weights (--dtype f16), which halve the matrices, or ' : ''}quantized weights (--dtype q8 or q4).`;
}

/**
 * The bytes the `names` tensors take as stored (scales included), each checked against the
 * binding limit (ShapeError naming it).
 */
function plannedBytes(
  ckpt: Checkpoint,
  names: string[],
  storage: (name: string) => { dtype: WeightDType; panel: number | undefined },
  limit: number,
  hint: string,
): number {
  let total = 0;
  for (const name of names) {
    const shape = ckpt.shape(name);
    const { dtype, panel } = storage(name);
    const bytes = storedBytes({ shape, dtype, panel });
    if (bytes > limit) {
      throw new ShapeError(
        `${ckpt.source}: tensor "${name}" [${shape.join(', ')}] ${dtype} is ${bytes} bytes, more than the storage binding limit ${limit}.${hint}`,
      );
    }
    total += bytes + scaleBytes(dtype, shape[0]!, shape[1] ?? 1);
  }
  return total;
}

/**
 * A buffer holding `data`, with GPU out-of-memory turned into OutOfMemoryError (`where`: how far the
 * upload got, for its message).
 */
async function createTracked(
  ctx: GpuContext,
  label: string,
  data: Float32Array | Uint32Array,
  where: () => string,
  hint: string,
): Promise<GPUBuffer> {
  ctx.device.pushErrorScope('out-of-memory');
  let buf: GPUBuffer | undefined;
  let thrown: unknown;
  try {
    buf = ctx.createBufferWithData(label, data, USAGE);
  } catch (e) {
    thrown = e;
  }
  const err = await ctx.device.popErrorScope();
  if (thrown instanceof OutOfMemoryError) throw thrown; // past maxBufferSize: already says so
  // A failed mappedAtCreation allocation throws RangeError; other failures surface in the scope.
  if (thrown && !(thrown instanceof RangeError)) throw thrown;
  if (err || thrown) {
    if (buf) ctx.destroyBuffer(buf);
    const why = err ? err.message : (thrown as Error).message;
    throw new OutOfMemoryError(
      `out of GPU memory uploading "${label}" (${data.byteLength} bytes) ${where()}: ${why}.${hint}`,
      { cause: thrown ?? err },
    );
  }
  return buf!;
}

/** Uploads every tensor of `ckpt`; see the module comment. */
export async function uploadWeights(ctx: GpuContext, ckpt: Checkpoint, opts: UploadOptions = {}): Promise<GPT2Weights> {
  const cfg = ckpt.config;
  const dtype = opts.dtype ?? 'f32';
  const limit = Math.min(opts.maxBindingBytes ?? Infinity, ctx.limits.maxStorageBufferBindingSize);
  const hint = sizeHint(dtype);
  const quant: QuantDType | undefined = dtype === 'q8' || dtype === 'q4' ? dtype : undefined;
  const [V, C] = ckpt.shape('wte.weight') as [number, number];
  const knPanel = opts.knPanel ?? 0;
  if (knPanel !== 0 && !isPanelWidth(knPanel)) {
    throw new InvalidOptionError(`uploadWeights: knPanel must be 0 or an even integer, got ${knPanel}`);
  }
  // Panels only where the GEMV that reads them runs (16-byte aligned rows).
  const panelOf = (name: string): number | undefined =>
    knPanel > 0 && isConv1D(name) && alignedRows(ckpt.shape(name)[1]!, dtype) ? knPanel : undefined;

  // Plan and check everything before allocating anything.
  const names = [...new Set(['wpe.weight', ...layerNames(cfg.n_layer), 'ln_f.weight', 'ln_f.bias'])];
  const dtypeOf = (name: string): WeightDType =>
    !isMatrix(name) ? 'f32' : quant && name === 'wpe.weight' ? 'f16' : dtype;
  let total = plannedBytes(ckpt, names, (n) => ({ dtype: dtypeOf(n), panel: panelOf(n) }), limit, hint);
  // wte [V, C]: row chunks [n, C], or with knPanel their transposes [C, n] in panels of knPanel.
  const rowsPerChunk = wteRowsPerChunk(V, C, dtype, limit, knPanel);
  const wteChunk = (n: number): Pick<GpuTensor, 'shape' | 'dtype' | 'panel'> =>
    knPanel > 0 ? { shape: [C, n], dtype, panel: knPanel } : { shape: [n, C], dtype };
  for (let r = 0; r < V; r += rowsPerChunk) {
    const n = Math.min(rowsPerChunk, V - r);
    total += storedBytes(wteChunk(n)) + scaleBytes(dtype, C, n);
  }

  const buffers: GPUBuffer[] = [];
  let destroyed = false;
  const destroy = () => {
    if (destroyed) return;
    destroyed = true;
    for (const b of buffers.splice(0)) ctx.destroyBuffer(b);
  };
  let loaded = 0;

  /** One tracked buffer holding `data`, with GPU out-of-memory turned into OutOfMemoryError. */
  const make = async (label: string, data: Float32Array | Uint32Array): Promise<GPUBuffer> => {
    const buf = await createTracked(ctx, label, data, () => `after ${loaded} of ${total} weight bytes`, hint);
    buffers.push(buf);
    return buf;
  };

  /** The scales of a quantized weight as a tensor [G, sN] of their own buffer. */
  const scalesOf = async (label: string, scales: Float32Array, K: number, N: number): Promise<GpuTensor> => {
    const shape = [scaleGroups(quant!, K), scaleStride(N)];
    const t: GpuTensor = { buffer: await make(`${label}.scales`, scales), offset: 0, shape, dtype: 'f32' };
    loaded += scales.byteLength;
    return t;
  };

  const upload = async (name: string): Promise<GpuTensor> => {
    const shape = ckpt.shape(name);
    const dt = dtypeOf(name);
    const values = await ckpt.read(name);
    checkFinite(ckpt.source, name, values, 0, dt);
    const panel = panelOf(name);
    const [K, N] = [shape[0]!, shape[1] ?? 1];
    const { data, scales } = packMatrix(values, K, N, dt, panel);
    const buffer = await make(name, data);
    const t: GpuTensor = { buffer, offset: 0, shape, dtype: dt, ...(panel ? { panel } : {}) };
    if (scales) t.scales = await scalesOf(name, scales, K, N);
    loaded += storedBytes(t);
    opts.onProgress?.({ loadedBytes: loaded, totalBytes: total, tensor: name });
    return t;
  };

  try {
    const chunks: GpuTensor[] = [];
    for (let r = 0; r < V; r += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, V - r);
      const rows = await ckpt.readRows('wte.weight', r, n);
      checkFinite(ckpt.source, 'wte.weight', rows, r * C, dtype);
      const label = `wte.weight[rows ${r}..${r + n})`;
      const chunk = wteChunk(n);
      const { data, scales } = packWteRows(rows, n, C, dtype, knPanel || undefined);
      const t = { buffer: await make(label, data), offset: 0, ...chunk } as GpuTensor;
      if (scales) t.scales = await scalesOf(label, scales, C, n);
      chunks.push(t);
      loaded += storedBytes(chunk);
      opts.onProgress?.({ loadedBytes: loaded, totalBytes: total, tensor: label });
    }
    const wte: ChunkedTensor = {
      shape: [V, C],
      dtype,
      rowsPerChunk,
      chunks,
      ...(knPanel > 0 ? { transposed: true } : {}),
    };
    const wpe = await upload('wpe.weight');
    const pair = async (p: string): Promise<NormWeights & LinearWeights> => ({
      weight: await upload(p + '.weight'),
      bias: await upload(p + '.bias'),
    });
    const h: LayerWeights[] = [];
    for (let l = 0; l < cfg.n_layer; l++) {
      const p = `h.${l}.`;
      const ln_1 = await pair(p + 'ln_1');
      const c_attn = await pair(p + 'attn.c_attn');
      const a_proj = await pair(p + 'attn.c_proj');
      const ln_2 = await pair(p + 'ln_2');
      const c_fc = await pair(p + 'mlp.c_fc');
      const m_proj = await pair(p + 'mlp.c_proj');
      h.push({ ln_1, attn: { c_attn, c_proj: a_proj }, ln_2, mlp: { c_fc, c_proj: m_proj } });
    }
    const ln_f = await pair('ln_f');
    return { config: cfg, wte, wpe, h, ln_f, dtype, bytes: buffers.reduce((s, b) => s + b.size, 0), destroy };
  } catch (e) {
    destroy();
    throw e;
  }
}

function layerNames(L: number): string[] {
  const out: string[] = [];
  for (let l = 0; l < L; l++) {
    for (const s of ['ln_1', 'attn.c_attn', 'attn.c_proj', 'ln_2', 'mlp.c_fc', 'mlp.c_proj'])
      out.push(`h.${l}.${s}.weight`, `h.${l}.${s}.bias`);
  }
  return out;
}
