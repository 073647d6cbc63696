/**
 * What every kernel module shares: tensor handles, recorded dispatches, resource ownership and
 * boundary checks.
 *
 * The pattern: a kernel class is created once per model (`await XKernel.create(ctx, ...)`, which
 * builds its pipelines), then `bind(owner, args)` checks shapes and returns `Dispatch` records (a
 * pipeline, a bind group, workgroup counts). Plans built from these records are encoded again and
 * again (every decode step) without creating anything new. Small constant parameters go in a
 * uniform buffer made at bind time and owned by `owner`.
 */
import { ShapeError } from '../errors.js';
import type { GpuContext } from './device.js';

/**
 * Element type of a GPU tensor. `f16` means IEEE halves packed in pairs into u32 words; `q8` and
 * `q4` signed 8- and 4-bit integers packed four and eight to a u32 word along the last dimension
 * (rows padded to whole words), with their scales in GpuTensor.scales (see kernels/quant.ts).
 */
export type DType = 'f32' | 'f16' | 'q8' | 'q4' | 'u32' | 'i32';

/** Bytes per element (f16 counts 2, q8 1, q4 0.5; packed rows are padded to whole u32 words). */
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, q8: 1, q4: 0.5, u32: 4, i32: 4 };

/** Elements per u32 word of a packed dtype (f16 2, q8 4, q4 8); 1 for the 32-bit ones. */
export function elementsPerWord(dtype: DType): number {
  return 4 / DTYPE_BYTES[dtype];
}

/** A dense row-major tensor living in (part of) a GPU buffer. `offset` is in bytes. */
export interface GpuTensor {
  buffer: GPUBuffer;
  offset: number;
  shape: number[];
  dtype: DType;
  /**
   * 2-D weights only: stored in column panels of `panel` columns, each panel whole as
   * [rows, panel] row-major, the last zero-padded (see packPanels in matmul.ts). `shape` stays the
   * logical [rows, cols]. Absent: plain row-major.
   */
  panel?: number;
  /**
   * q8 / q4 weights only: the f32 scales, [G, sN] row-major (G = 1 for q8, ceil(K / 32) for q4;
   * sN = output columns rounded up to a multiple of 8, zero-padded); see kernels/quant.ts.
   */
  scales?: GpuTensor;
}

/**
 * A 2-D weight whose rows are split over several tensors because the whole would pass the
 * adapter's maxStorageBufferBindingSize (e.g. gpt2's 50257 x 768 f32 token embedding, 154 MB).
 * chunks[i] holds rows [i * rowsPerChunk, min(rows, (i + 1) * rowsPerChunk)): n_i rows, as a
 * [n_i, cols] tensor, or when `transposed` as their transpose [cols, n_i] in column panels
 * (GpuTensor.panel set), the layout the CPU-adapter GEMV streams (the LM head then reads it as a
 * [K, N] weight; the embedding lookup reads one token's column of it).
 */
export interface ChunkedTensor {
  shape: [number, number]; // [rows, cols] of the whole, whichever way the chunks are stored
  dtype: DType;
  rowsPerChunk: number;
  chunks: GpuTensor[];
  transposed?: boolean;
}

/** Kernel families, for per-kernel GPU timing tables. */
export type KernelFamily =
  'embedding' | 'layernorm' | 'matmul' | 'attention' | 'kvcache' | 'elementwise' | 'sampling' | 'beam' | 'copy';

/** One recorded compute dispatch, encodable any number of times. */
export interface Dispatch {
  family: KernelFamily;
  label: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: readonly [number, number, number];
}

/** Encodes dispatches into an open compute pass. */
export function encodeDispatches(pass: GPUComputePassEncoder, list: readonly Dispatch[]): void {
  for (const d of list) {
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
  }
}

/** Bytes per uniform arena buffer: 64 slices at the usual 256-byte offset alignment. */
export const UNIFORM_ARENA_BYTES = 16384;

/** A kernel's parameters: a range of a uniform arena buffer, bound as is. */
export interface UniformSlice {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

/**
 * Owns GPU buffers made for a plan (uniforms, scratch) so they are freed together.
 * Bind groups need no destroy; they die with their buffers.
 */
export class Owned {
  private readonly buffers: GPUBuffer[] = [];
  /** The arena uniform() fills now. */
  private arena: { buffer: GPUBuffer; used: number } | undefined;
  constructor(readonly ctx: GpuContext) {}

  /**
   * A uniform slice holding `words` (each a u32 bit pattern; use f32bits() for floats). Slices
   * share arena buffers of UNIFORM_ARENA_BYTES at the adapter's uniform offset alignment, so a
   * plan of ~100 dispatches creates 2-4 buffers, not ~100 (plan set-up is on a generation's
   * first-token path); the words go in with queue.writeBuffer, ordered before later submits.
   */
  uniform(label: string, words: number[]): UniformSlice {
    // Uniform structs are sized in 16-byte units.
    const size = Math.max(16, Math.ceil(words.length / 4) * 16);
    const align = this.ctx.limits.minUniformBufferOffsetAlignment;
    let offset = this.arena ? Math.ceil(this.arena.used / align) * align : 0;
    if (!this.arena || offset + size > this.arena.buffer.size) {
      const bytes = Math.max(UNIFORM_ARENA_BYTES, size);
      this.arena = {
        buffer: this.buffer(`${label} (uniform arena)`, bytes, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST),
        used: 0,
      };
      offset = 0;
    }
    const data = new Uint32Array(size / 4);
    words.forEach((w, i) => (data[i] = w >>> 0));
    this.ctx.device.queue.writeBuffer(this.arena.buffer, offset, data);
    this.arena.used = offset + size;
    return { buffer: this.arena.buffer, offset, size };
  }

  /** A tracked scratch/storage buffer owned by this plan. */
  buffer(label: string, size: number, usage: GPUBufferUsageFlags): GPUBuffer {
    const buf = this.ctx.createBuffer(label, size, usage);
    this.buffers.push(buf);
    return buf;
  }

  /** Takes ownership of an existing tracked buffer. */
  adopt(buf: GPUBuffer): GPUBuffer {
    this.buffers.push(buf);
    return buf;
  }

  get bytes(): number {
    return this.buffers.reduce((s, b) => s + b.size, 0);
  }

  destroy(): void {
    for (const b of this.buffers.splice(0)) this.ctx.destroyBuffer(b);
    this.arena = undefined;
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** Bit pattern of a float32, for uniform words. */
export function f32bits(x: number): number {
  f32[0] = x;
  return u32[0]!;
}

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Bytes a tensor of this shape and dtype occupies (packed rows padded to whole u32 words). */
export function tensorBytes(shape: readonly number[], dtype: DType): number {
  const per = elementsPerWord(dtype);
  if (per === 1) return numel(shape) * DTYPE_BYTES[dtype];
  const last = shape.length ? shape[shape.length - 1]! : 1;
  const rows = numel(shape) / (last || 1);
  return rows * Math.ceil(last / per) * 4;
}

/** Whether `n` is a power of two in [lo, hi] (workgroup widths, lanes per row...). */
export function isPowerOfTwoIn(n: number, lo: number, hi: number): boolean {
  return Number.isInteger(n) && n >= lo && n <= hi && (n & (n - 1)) === 0;
}

/** Whether `p` can be a GpuTensor.panel width: an even integer >= 2 (f16 pairs stay in a panel). */
export function isPanelWidth(p: number): boolean {
  return Number.isInteger(p) && p >= 2 && p % 2 === 0;
}

/**
 * The shape a tensor is stored as: its shape, or for a paneled [rows, cols] tensor its panels
 * stacked, [ceil(cols / panel) * rows, panel].
 */
export function storedShape(t: Pick<GpuTensor, 'shape' | 'panel'>): number[] {
  if (!t.panel) return t.shape;
  const [rows, cols] = t.shape as [number, number];
  return [Math.ceil(cols / t.panel) * rows, t.panel];
}

/** Bytes a tensor occupies in its buffer: tensorBytes of its stored shape (padded panels included). */
export function storedBytes(t: Pick<GpuTensor, 'shape' | 'dtype' | 'panel'>): number {
  return tensorBytes(storedShape(t), t.dtype);
}

/** A binding resource for a tensor: exactly its bytes (rounded to 4). */
export function binding(t: GpuTensor): GPUBufferBinding {
  return { buffer: t.buffer, offset: t.offset, size: Math.ceil(storedBytes(t) / 4) * 4 };
}

/** Throws ShapeError unless `t` has exactly `shape` and one of `dtypes`. */
export function expectTensor(what: string, t: GpuTensor, shape: readonly number[], dtypes: readonly DType[]): void {
  const same = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
  if (!same) {
    throw new ShapeError(`${what}: expected shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`);
  }
  if (!dtypes.includes(t.dtype)) {
    throw new ShapeError(`${what}: expected dtype ${dtypes.join(' or ')}, got ${t.dtype}`);
  }
  if (t.panel !== undefined && (t.shape.length !== 2 || !isPanelWidth(t.panel))) {
    throw new ShapeError(
      `${what}: panels need a 2-D tensor and an even panel width >= 2, got [${t.shape.join(', ')}] with panel ${t.panel}`,
    );
  }
  const need = t.offset + storedBytes(t);
  if (need > t.buffer.size) {
    throw new ShapeError(
      `${what}: [${t.shape.join(', ')}] ${t.dtype} at byte ${t.offset} needs ${need} bytes; buffer "${t.buffer.label}" has ${t.buffer.size}`,
    );
  }
}

/** Throws ShapeError if a binding would pass the adapter's maxStorageBufferBindingSize. */
export function expectBindable(ctx: GpuContext, what: string, t: GpuTensor): void {
  const bytes = storedBytes(t);
  const max = ctx.limits.maxStorageBufferBindingSize;
  if (bytes > max) {
    throw new ShapeError(
      `${what}: ${bytes} bytes passes maxStorageBufferBindingSize ${max}; split it into chunks (see ChunkedTensor)`,
    );
  }
}

/** Workgroup count along one dimension, checked against the adapter's per-dimension limit. */
export function groups(ctx: GpuContext, what: string, n: number): number {
  const max = ctx.limits.maxComputeWorkgroupsPerDimension;
  if (n > max) throw new ShapeError(`${what}: needs ${n} workgroups in one dimension; the adapter allows ${max}`);
  return Math.max(1, n);
}
