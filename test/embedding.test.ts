import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { EmbeddingKernel } from '../src/kernels/embedding.js';
import { ChunkedTensor, DType, GpuTensor, Owned } from '../src/gpu/common.js';
import { packF16, unpackF16 } from '../src/kernels/f16.js';
import { packPanelsTransposed } from '../src/kernels/matmul-pack.js';
import { ShapeError } from '../src/errors.js';
import { allClose, download, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { embedding64 } from './reference/embedding.js';

/** Uploads [rows, C] values as f32 or packed f16; returns the tensor and the values it holds. */
function weight(
  owned: Owned,
  vals: Float32Array,
  rows: number,
  C: number,
  dtype: DType,
): { t: GpuTensor; held: Float32Array } {
  if (dtype === 'f32') return { t: upload(owned, vals, [rows, C]), held: vals };
  const words = packF16(vals, rows, C);
  return { t: upload(owned, words, [rows, C], 'f16'), held: unpackF16(words, rows, C) };
}

/**
 * Splits [V, C] into chunks of `per` rows, each in its own buffer: [rows, C], or with `panel` (the
 * CPU-adapter LM head layout) the transpose [C, rows] in column panels of `panel`.
 */
function chunked(
  owned: Owned,
  vals: Float32Array,
  V: number,
  C: number,
  per: number,
  dtype: DType,
  panel = 0,
): { w: ChunkedTensor; held: Float32Array } {
  const chunks: GpuTensor[] = [];
  const held = dtype === 'f16' ? unpackF16(packF16(vals, V, C), V, C) : vals;
  for (let r0 = 0; r0 < V; r0 += per) {
    const rows = Math.min(per, V - r0);
    const part = held.subarray(r0 * C, (r0 + rows) * C);
    if (panel === 0) {
      chunks.push(weight(owned, part, rows, C, dtype).t);
      continue;
    }
    const laid = packPanelsTransposed(part, rows, C, panel);
    const np = Math.ceil(rows / panel);
    const data = dtype === 'f16' ? packF16(laid, np * C, panel) : laid;
    chunks.push({ ...upload(owned, data, [np * C, panel], dtype), shape: [C, rows], panel });
  }
  return { w: { shape: [V, C], dtype, rowsPerChunk: per, chunks, ...(panel ? { transposed: true } : {}) }, held };
}

function metaOf(rows: number[], pos: number[]): Uint32Array {
  const m = new Uint32Array(2 * pos.length);
  pos.forEach((p, t) => {
    m[2 * t] = rows[t]!;
    m[2 * t + 1] = p;
  });
  return m;
}

// V = 1000 in chunks of 400 rows (400, 400, 200); C even and odd (f16 rows padded); wte chunks
// row-major or transposed in panels of 64 / 48 columns (the last panel of each chunk part-filled).
const CASES: Array<[DType, DType, number, number]> = [
  ['f32', 'f32', 48, 0],
  ['f16', 'f16', 48, 0],
  ['f16', 'f16', 33, 0],
  ['f16', 'f32', 33, 0],
  ['f32', 'f16', 7, 0],
  ['f32', 'f32', 48, 64],
  ['f16', 'f16', 33, 64],
  ['f16', 'f32', 7, 48],
];
for (const [wd, pd, C, panel] of CASES) {
  test(`embedding wte ${wd} (3 chunks${panel ? `, transposed in panels of ${panel}` : ''}) + wpe ${pd}, C ${C}, matches float64`, () =>
    withDevice(async ({ ctx, owned }) => {
      const V = 1000,
        nPos = 64,
        T = 37;
      const rng = new Rng(V + C);
      const { w, held: wteHeld } = chunked(owned, rng.normals(V * C, 0.1), V, C, 400, wd, panel);
      const { t: wpe, held: wpeHeld } = weight(owned, rng.normals(nPos * C, 0.02), nPos, C, pd);
      // ids on both sides of every chunk boundary, then random ones
      const ids = [0, 399, 400, 799, 800, 999];
      while (ids.length < T) ids.push(rng.int(V));
      const pos = ids.map(() => rng.int(nPos));
      pos[0] = nPos - 1;
      const rows = ids.map(() => rng.int(3));
      const out = poisoned(owned, [T, C]);
      const k = await EmbeddingKernel.create(ctx);
      const list = k.bind(owned, {
        ids: upload(owned, Uint32Array.from(ids), [T], 'u32'),
        meta: upload(owned, metaOf(rows, pos), [T, 2], 'u32'),
        wte: w,
        wpe,
        out,
      });
      assert.is(list.length, 3);
      await run(ctx, list);
      allClose(
        await download(ctx, out),
        embedding64(wteHeld, V, wpeHeld, nPos, C, ids, pos),
        { rel: 1e-6, atol: 1e-6 },
        'embedding',
      );
    }));
}

test('embedding: ids >= V and positions >= nPos give NaN rows without reading out of bounds', () =>
  withDevice(async ({ ctx, owned }) => {
    const V = 10,
      C = 6,
      nPos = 4;
    const rng = new Rng(10);
    const wteVals = rng.normals(V * C);
    const wpeVals = rng.normals(nPos * C);
    const { w } = chunked(owned, wteVals, V, C, 4, 'f32');
    const ids = [3, 10, 0xffffffff, 9, 5];
    const pos = [0, 1, 2, 3, 4];
    const out = upload(owned, new Float32Array(ids.length * C), [ids.length, C]); // zeros: NaN must be written
    const k = await EmbeddingKernel.create(ctx);
    await run(
      ctx,
      k.bind(owned, {
        ids: upload(owned, Uint32Array.from(ids), [ids.length], 'u32'),
        meta: upload(owned, metaOf([0, 0, 0, 0, 0], pos), [ids.length, 2], 'u32'),
        wte: w,
        wpe: upload(owned, wpeVals, [nPos, C]),
        out,
      }),
    );
    const got = await download(ctx, out);
    const ref = embedding64(wteVals, V, wpeVals, nPos, C, ids, pos);
    for (let i = 0; i < got.length; i++) {
      if (Number.isNaN(ref[i]!))
        assert.ok(Number.isNaN(got[i]!), `element ${i} (token ${Math.floor(i / C)}) should be NaN, got ${got[i]}`);
    }
    allClose(got.subarray(0, C), ref.subarray(0, C), { atol: 1e-6 }, 'valid token 0');
    allClose(got.subarray(3 * C, 4 * C), ref.subarray(3 * C, 4 * C), { atol: 1e-6 }, 'valid token 3');
  }));

test('embedding rejects chunks that do not cover V and mismatched widths', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await EmbeddingKernel.create(ctx);
    const args = {
      ids: poisoned(owned, [2], 'u32'),
      meta: poisoned(owned, [2, 2], 'u32'),
      wpe: poisoned(owned, [4, 8]),
      out: poisoned(owned, [2, 8]),
    };
    assert.throws(
      () =>
        k.bind(owned, {
          ...args,
          wte: {
            shape: [10, 8],
            dtype: 'f32',
            rowsPerChunk: 4,
            chunks: [poisoned(owned, [4, 8]), poisoned(owned, [4, 8])],
          },
        }),
      (e: Error) => e instanceof ShapeError && /cover 8 rows, expected 10/.test(e.message),
    );
    assert.throws(
      () =>
        k.bind(owned, {
          ...args,
          wte: { shape: [4, 8], dtype: 'f32', rowsPerChunk: 4, chunks: [poisoned(owned, [4, 7])] },
        }),
      (e: Error) => e instanceof ShapeError && /expected shape \[4, 8\], got \[4, 7\]/.test(e.message),
    );
    const rowMajor = poisoned(owned, [4, 8]);
    assert.throws(
      () =>
        k.bind(owned, {
          ...args,
          wte: {
            shape: [4, 8],
            dtype: 'f32',
            rowsPerChunk: 4,
            chunks: [{ ...rowMajor, shape: [8, 4] }],
            transposed: true,
          },
        }),
      (e: Error) => e instanceof ShapeError && /a transposed wte chunk must be stored in panels/.test(e.message),
    );
    assert.throws(
      () =>
        k.bind(owned, {
          ...args,
          wte: { shape: [4, 8], dtype: 'f32', rowsPerChunk: 4, chunks: [{ ...rowMajor, panel: 4 }] },
        }),
      (e: Error) => e instanceof ShapeError && /a row-major wte chunk cannot have panels/.test(e.message),
    );
  }));

test.run();
