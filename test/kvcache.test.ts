import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { KvGatherKernel, KvWriteKernel } from '../src/kernels/kvcache.js';
import { ShapeError } from '../src/errors.js';
import { allClose, download, downloadU32, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { packF16 } from '../src/kernels/f16.js';
import type { GpuContext } from '../src/gpu/device.js';
import type { GpuTensor, Owned } from '../src/gpu/common.js';
import { kvGather64 } from './reference/attention.js';

/**
 * Runs `kernel` (kv_write) over tokens of `qkv` [T, 3C] placed at (rowOf[t], posOf[t]), and returns
 * the caches [rows, cap, C] it should leave: each token's k and v at slot pos % cap of its row, NaN
 * elsewhere (tokens of rows >= rows write nothing).
 */
async function writeKv(
  ctx: GpuContext,
  owned: Owned,
  kernel: KvWriteKernel,
  qkv: Float32Array,
  rowOf: number[],
  posOf: number[],
  caches: { k: GpuTensor; v: GpuTensor },
): Promise<{ expK: Float32Array; expV: Float32Array }> {
  const [rows, cap, C] = caches.k.shape as [number, number, number];
  const T = rowOf.length;
  const meta = Uint32Array.from(rowOf.flatMap((r, t) => [r, posOf[t]!]));
  await run(ctx, [
    kernel.bind(owned, {
      qkv: upload(owned, qkv, [T, 3 * C]),
      meta: upload(owned, meta, [T, 2], 'u32'),
      kCache: caches.k,
      vCache: caches.v,
    }),
  ]);
  const expK = new Float32Array(rows * cap * C).fill(NaN);
  const expV = new Float32Array(rows * cap * C).fill(NaN);
  rowOf.forEach((r, t) => {
    if (r >= rows) return;
    const at = (r * cap + (posOf[t]! % cap)) * C;
    expK.set(qkv.subarray(t * 3 * C + C, t * 3 * C + 2 * C), at);
    expV.set(qkv.subarray(t * 3 * C + 2 * C, t * 3 * C + 3 * C), at);
  });
  return { expK, expV };
}

test('kv_write puts k and v of each token at slot pos % cap of its row, nothing else', () =>
  withDevice(async ({ ctx, owned }) => {
    const rows = 3,
      cap = 8,
      C = 20;
    const rowOf = [2, 0, 0, 1, 2, 5]; // the last token claims row 5 of 3: skipped
    const posOf = [3, 0, 9, 7, 4, 0]; // pos 9 wraps to slot 1
    const qkv = new Rng(1).normals(rowOf.length * 3 * C);
    const kT = poisoned(owned, [rows, cap, C]);
    const vT = poisoned(owned, [rows, cap, C]);
    const k = await KvWriteKernel.create(ctx);
    const { expK, expV } = await writeKv(ctx, owned, k, qkv, rowOf, posOf, { k: kT, v: vT });
    const same = (a: Float32Array, b: Float32Array) =>
      a.every((x, i) => Object.is(x, b[i]) || (Number.isNaN(x) && Number.isNaN(b[i]!)));
    assert.ok(same(await download(ctx, kT), expK), 'k cache: written slots equal k, all others untouched (NaN)');
    assert.ok(same(await download(ctx, vT), expV), 'v cache: written slots equal v, all others untouched (NaN)');
  }));

test('kv_gather reorders rows by a GPU parent list; setLength changes the copied slots', () =>
  withDevice(async ({ ctx, owned }) => {
    const rows = 4,
      cap = 8,
      C = 12;
    const src = new Rng(2).normals(rows * cap * C);
    const init = new Rng(3).normals(rows * cap * C); // dst's previous content: slots >= len keep it
    const parent = Uint32Array.from([2, 0, 0, 3]);
    const dst = upload(owned, init, [rows, cap, C]);
    const k = await KvGatherKernel.create(ctx);
    const d = k.bind(owned, {
      src: upload(owned, src, [rows, cap, C]),
      dst,
      parent: upload(owned, parent, [rows], 'u32'),
      len: 5,
      maxLen: 7,
    });
    await run(ctx, [d]);
    const after5 = await download(ctx, dst);
    allClose(after5, kvGather64(src, rows, init, rows, cap, C, parent, 5), { atol: 0 }, 'gather len 5');
    d.setLength(7);
    await run(ctx, [d]);
    allClose(
      await download(ctx, dst),
      kvGather64(src, rows, after5, rows, cap, C, parent, 7),
      { atol: 0 },
      'gather len 7',
    );
    assert.throws(
      () => d.setLength(8),
      (e: Error) => e instanceof ShapeError && /\[0, 7\].*got 8/.test(e.message),
    );
  }));

test('kv_gather copies one prefilled row to N rows (parent = zeros); a bad parent gives NaN', () =>
  withDevice(async ({ ctx, owned }) => {
    const cap = 16,
      C = 36,
      n = 5,
      len = 11;
    const src = new Rng(4).normals(cap * C);
    const parent = Uint32Array.from([0, 0, 0, 1, 0]); // row 3 names a source row that does not exist
    const dst = poisoned(owned, [n, cap, C]);
    const k = await KvGatherKernel.create(ctx);
    await run(ctx, [
      k.bind(owned, { src: upload(owned, src, [1, cap, C]), dst, parent: upload(owned, parent, [n], 'u32'), len }),
    ]);
    const got = await download(ctx, dst);
    const ref = kvGather64(src, 1, new Float32Array(n * cap * C).fill(NaN), n, cap, C, parent, len);
    for (let r = 0; r < n; r++) {
      if (r === 3) continue;
      allClose(
        got.subarray(r * cap * C, r * cap * C + len * C),
        ref.subarray(r * cap * C, r * cap * C + len * C),
        { atol: 0 },
        `row ${r}`,
      );
      assert.ok(
        got.subarray(r * cap * C + len * C, (r + 1) * cap * C).every(Number.isNaN),
        `row ${r}: slots >= len untouched`,
      );
    }
    // the poison is NaN too, so check the bad row was actually written: zero it first and rerun
    const zeroed = upload(owned, new Float32Array(n * cap * C), [n, cap, C]);
    await run(ctx, [
      k.bind(owned, {
        src: upload(owned, src, [1, cap, C]),
        dst: zeroed,
        parent: upload(owned, parent, [n], 'u32'),
        len,
      }),
    ]);
    const z = await download(ctx, zeroed);
    assert.ok(z.subarray(3 * cap * C, 3 * cap * C + len * C).every(Number.isNaN), 'bad parent writes NaN');
  }));

test('f16 caches: kv_write stores each value as its round-to-nearest-even half, two per word; kv_gather copies the words, NaN halves for a bad parent', () =>
  withDevice(async ({ ctx, owned }) => {
    const rows = 2,
      cap = 4,
      C = 8;
    const rowOf = [1, 0, 1];
    const posOf = [2, 3, 5]; // pos 5 wraps to slot 1
    const qkv = new Rng(5).normals(rowOf.length * 3 * C);
    const nanWords = () => new Uint32Array((rows * cap * C) / 2).fill(0x7e007e00);
    const kT = upload(owned, nanWords(), [rows, cap, C], 'f16');
    const vT = upload(owned, nanWords(), [rows, cap, C], 'f16');
    const w = await KvWriteKernel.create(ctx, 'f16');
    const { expK, expV } = await writeKv(ctx, owned, w, qkv, rowOf, posOf, { k: kT, v: vT });
    const kWords = await downloadU32(ctx, kT);
    assert.equal(Array.from(kWords), Array.from(packF16(expK, rows * cap, C)), 'k words');
    assert.equal(Array.from(await downloadU32(ctx, vT)), Array.from(packF16(expV, rows * cap, C)), 'v words');
    // gather rows [1, 0, bad] of the K cache, 3 slots
    const dst = upload(owned, new Uint32Array((3 * cap * C) / 2), [3, cap, C], 'f16');
    const g = await KvGatherKernel.create(ctx);
    await run(ctx, [
      g.bind(owned, { src: kT, dst, parent: upload(owned, Uint32Array.of(1, 0, 7), [3], 'u32'), len: 3 }),
    ]);
    const got = await downloadU32(ctx, dst);
    const wpr = (cap * C) / 2; // words per row
    const want = new Uint32Array(3 * wpr);
    want.set(kWords.subarray(wpr, wpr + (3 * C) / 2), 0);
    want.set(kWords.subarray(0, (3 * C) / 2), wpr);
    want.fill(0x7e007e00, 2 * wpr, 2 * wpr + (3 * C) / 2);
    assert.equal(Array.from(got), Array.from(want), 'gathered words');
    // an f32 cache given to the f16 kernel, and a gather across dtypes, are refused
    assert.throws(
      () =>
        w.bind(owned, {
          qkv: poisoned(owned, [1, 3 * C]),
          meta: poisoned(owned, [1, 2], 'u32'),
          kCache: poisoned(owned, [rows, cap, C]),
          vCache: poisoned(owned, [rows, cap, C]),
        }),
      (e: Error) => e instanceof ShapeError && /expected dtype f16, got f32/.test(e.message),
    );
    assert.throws(
      () => g.bind(owned, { src: kT, dst: poisoned(owned, [3, cap, C]), parent: poisoned(owned, [3], 'u32'), len: 1 }),
      (e: Error) => e instanceof ShapeError && /must match src's capacity, width and dtype/.test(e.message),
    );
  }));

test('kv kernels reject mismatched caches and aliasing src/dst', () =>
  withDevice(async ({ ctx, owned }) => {
    const g = await KvGatherKernel.create(ctx);
    const a = poisoned(owned, [2, 8, 4]);
    assert.throws(
      () => g.bind(owned, { src: a, dst: a, parent: poisoned(owned, [2], 'u32'), len: 1 }),
      (e: Error) => e instanceof ShapeError && /overlaps src/.test(e.message),
    );
    assert.throws(
      () =>
        g.bind(owned, {
          src: a,
          dst: poisoned(owned, [2, 8, 4]),
          parent: poisoned(owned, [2], 'u32'),
          len: 9,
          maxLen: 9,
        }),
      (e: Error) => e instanceof ShapeError && /maxLen must be an integer in \[0, 8\].*got 9/.test(e.message),
    );
    const w = await KvWriteKernel.create(ctx);
    assert.throws(
      () =>
        w.bind(owned, {
          qkv: poisoned(owned, [3, 12]),
          meta: poisoned(owned, [3, 2], 'u32'),
          kCache: a,
          vCache: poisoned(owned, [2, 8, 5]),
        }),
      (e: Error) => e instanceof ShapeError && /expected shape \[2, 8, 4\], got \[2, 8, 5\]/.test(e.message),
    );
  }));

test.run();
