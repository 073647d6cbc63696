/**
 * Test helpers shared by every suite:
 *   - `withDevice(fn)`: runs fn with the process's GpuContext and a fresh `Owned` scope; turns any
 *     uncaptured GPU error into a test failure and frees every buffer the test created.
 *   - `allClose` / `relError`: one comparison helper that reports count, worst error and where.
 *   - `Rng`: seeded random numbers (float64 references need reproducible inputs).
 *   - upload / poison / download helpers for GPU tensors.
 */
import { GpuContext } from '../src/gpu/device.js';
import { nodeContext } from '../src/node.js';
import { Dispatch, DType, encodeDispatches, GpuTensor, Owned, storedBytes, tensorBytes } from '../src/gpu/common.js';

let shared: Promise<GpuContext> | undefined;

/** The test process's GPU context (created once; ~0.3 s on lavapipe). */
export function context(): Promise<GpuContext> {
  shared ??= nodeContext();
  return shared;
}

export interface DeviceScope {
  ctx: GpuContext;
  owned: Owned;
}

/**
 * Runs `fn` on the shared device. Validation errors raised during it fail the test; buffers created
 * through `owned` are destroyed afterwards, whatever happened.
 */
export async function withDevice<T>(fn: (s: DeviceScope) => Promise<T>): Promise<T> {
  const ctx = await context();
  ctx.uncapturedErrors.splice(0);
  const owned = new Owned(ctx);
  try {
    const out = await fn({ ctx, owned });
    await ctx.device.queue.onSubmittedWorkDone();
    ctx.throwIfErrors();
    return out;
  } finally {
    owned.destroy();
  }
}

export const STORAGE = 0x80 | 0x8 | 0x4; // STORAGE | COPY_DST | COPY_SRC (GPUBufferUsage values)

/** Uploads data as a storage tensor owned by `owned`. f16 expects already-packed u32 words. */
export function upload(
  owned: Owned,
  data: Float32Array | Uint32Array | Int32Array,
  shape: number[],
  dtype: DType = 'f32',
): GpuTensor {
  const buf = owned.adopt(owned.ctx.createBufferWithData('test.input', data, STORAGE));
  return { buffer: buf, offset: 0, shape, dtype };
}

/** An output tensor pre-filled with NaN (f32) or 0xDEADBEEF (u32/i32), so unwritten elements show. */
export function poisoned(owned: Owned, shape: number[], dtype: DType = 'f32'): GpuTensor {
  const bytes = tensorBytes(shape, dtype);
  const words = new Uint32Array(Math.ceil(bytes / 4)).fill(
    dtype === 'f32' || dtype === 'f16' ? 0x7fc00000 : 0xdeadbeef,
  );
  return upload(owned, words, shape, dtype);
}

/** Reads a tensor back as Float32Array (f32) or Uint32Array (u32/i32). */
export async function download(ctx: GpuContext, t: GpuTensor): Promise<Float32Array> {
  const ab = await ctx.readBuffer(t.buffer, t.offset, storedBytes(t));
  return new Float32Array(ab);
}
export async function downloadU32(ctx: GpuContext, t: GpuTensor): Promise<Uint32Array> {
  const ab = await ctx.readBuffer(t.buffer, t.offset, storedBytes(t));
  return new Uint32Array(ab);
}

/** Encodes the dispatches in one compute pass, submits, and waits. */
export async function run(ctx: GpuContext, list: readonly Dispatch[]): Promise<void> {
  const enc = ctx.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  encodeDispatches(pass, list);
  pass.end();
  ctx.submit([enc.finish()]);
  await ctx.device.queue.onSubmittedWorkDone();
  ctx.throwIfErrors();
}

/** Awaits `fn()` and fails unless it rejects with an error accepted by `check` (uvu has no rejects). */
export async function rejects(fn: () => Promise<unknown>, check: (e: Error) => boolean, what = 'call'): Promise<void> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error(`${what}: expected a rejection, but it resolved`);
  if (!check(err as Error))
    throw new Error(`${what}: rejected with an unexpected error: ${(err as Error)?.name}: ${(err as Error)?.message}`);
}

/** Seeded PRNG (mulberry32) with uniform and normal draws. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  uniform(lo = -1, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }
  normal(): number {
    const u = Math.max(this.next(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Float32Array of n values ~ N(0, std^2) (+ mean). */
  normals(n: number, std = 1, mean = 0): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = mean + std * this.normal();
    return a;
  }
}

export interface CloseReport {
  ok: boolean;
  count: number; // elements outside tolerance
  worst: number; // worst |a - e|
  where: number; // flat index of the worst element
  relative: number; // ||a - e|| / ||e||
  message: string;
}

/**
 * Compares `actual` with `expected` element-wise: |a - e| <= atol + rtol * |e|. NaN or Inf in
 * actual where expected is finite counts as a failure. Reports count, worst error and its index.
 */
export function compare(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  opts: { atol?: number; rtol?: number; rel?: number } = {},
): CloseReport {
  const atol = opts.atol ?? 0;
  const rtol = opts.rtol ?? 0;
  if (actual.length !== expected.length) {
    return {
      ok: false,
      count: -1,
      worst: Infinity,
      where: -1,
      relative: Infinity,
      message: `length ${actual.length} != expected ${expected.length}`,
    };
  }
  let count = 0;
  let worst = 0;
  let where = -1;
  let num = 0;
  let den = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    if (a === e) {
      den += e * e;
      continue;
    } // covers matching infinities
    const d = Math.abs(a - e);
    const bad = !(d <= atol + rtol * Math.abs(e));
    if (bad) count++;
    if (!(d <= worst)) {
      worst = Number.isNaN(d) ? Infinity : d;
      where = i;
    }
    num += Number.isFinite(d) ? d * d : Infinity;
    den += e * e;
  }
  const relative = den > 0 ? Math.sqrt(num) / Math.sqrt(den) : Math.sqrt(num);
  const relOk = opts.rel === undefined || relative < opts.rel;
  const elemOk = opts.atol === undefined && opts.rtol === undefined ? true : count === 0;
  const ok = relOk && elemOk;
  const message = ok
    ? 'ok'
    : `${count} of ${actual.length} elements out of tolerance (atol ${atol}, rtol ${rtol}); worst |diff| ${worst} at index ${where} ` +
      `(got ${where >= 0 ? actual[where] : '?'}, expected ${where >= 0 ? expected[where] : '?'}); relative error ${relative.toExponential(3)}` +
      (opts.rel !== undefined ? ` (limit ${opts.rel})` : '');
  return { ok, count, worst, where, relative, message };
}

/** Throws (failing the test) unless `actual` is close to `expected`; see `compare`. */
export function allClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  opts: { atol?: number; rtol?: number; rel?: number },
  what = 'values',
): CloseReport {
  const r = compare(actual, expected, opts);
  if (!r.ok) throw new Error(`${what}: ${r.message}`);
  return r;
}
