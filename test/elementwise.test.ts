import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { GatherRowsKernel } from '../src/kernels/elementwise.js';
import { AddKernel, GeluKernel } from './kernels/elementwise.js';
import { ShapeError } from '../src/errors.js';
import { allClose, download, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { add64, gatherRows64, gelu64 } from './reference/elementwise.js';

// Sizes that are not multiples of the workgroup size (256), one of them below it.
for (const n of [1, 37, 1000, 12345]) {
  test(`gelu_new out of place [${n}] matches float64 (incl. |x| up to 60)`, () =>
    withDevice(async ({ ctx, owned }) => {
      const rng = new Rng(n);
      const x = rng.normals(n, 3);
      if (n > 4) x.set([60, -60, -9, 12], 0); // saturated tails: exactly x and 0
      const k = await GeluKernel.create(ctx);
      const y = poisoned(owned, [n]);
      const xt = upload(owned, x, [n]);
      await run(ctx, [k.bind(owned, { x: xt, y })]);
      allClose(await download(ctx, y), gelu64(x), { rel: 1e-5, atol: 1e-6, rtol: 1e-5 }, 'gelu');
      allClose(await download(ctx, xt), x, { atol: 0 }, 'gelu input untouched');
    }));
}

test('gelu_new in place [7, 300]', () =>
  withDevice(async ({ ctx, owned }) => {
    const x = new Rng(7).normals(2100, 2);
    const k = await GeluKernel.create(ctx);
    const t = upload(owned, x, [7, 300]);
    await run(ctx, [k.bind(owned, { x: t, y: t })]);
    allClose(await download(ctx, t), gelu64(x), { rel: 1e-5, atol: 1e-6, rtol: 1e-5 }, 'gelu in place');
  }));

test('add out of place and in place (out = a, out = b)', () =>
  withDevice(async ({ ctx, owned }) => {
    const n = 3001;
    const rng = new Rng(3);
    const a = rng.normals(n);
    const b = rng.normals(n, 5);
    const ref = add64(a, b);
    const k = await AddKernel.create(ctx);
    const out = poisoned(owned, [n]);
    await run(ctx, [k.bind(owned, { a: upload(owned, a, [n]), b: upload(owned, b, [n]), out })]);
    allClose(await download(ctx, out), ref, { rel: 1e-7, atol: 1e-6 }, 'add');
    const ta = upload(owned, a, [n]);
    await run(ctx, [k.bind(owned, { a: ta, b: upload(owned, b, [n]), out: ta })]);
    allClose(await download(ctx, ta), ref, { rel: 1e-7, atol: 1e-6 }, 'add in place (a)');
    const tb = upload(owned, b, [n]);
    await run(ctx, [k.bind(owned, { a: upload(owned, a, [n]), b: tb, out: tb })]);
    allClose(await download(ctx, tb), ref, { rel: 1e-7, atol: 1e-6 }, 'add in place (b)');
  }));

test('gather_rows picks rows by a GPU index (repeats, reversed, out of range -> NaN)', () =>
  withDevice(async ({ ctx, owned }) => {
    const T = 9,
      C = 77;
    const x = new Rng(9).normals(T * C);
    const idx = Uint32Array.from([8, 0, 3, 3, 2]);
    const k = await GatherRowsKernel.create(ctx);
    const out = poisoned(owned, [idx.length, C]);
    await run(ctx, [k.bind(owned, { x: upload(owned, x, [T, C]), idx: upload(owned, idx, [idx.length], 'u32'), out })]);
    allClose(await download(ctx, out), gatherRows64(x, T, C, idx), { atol: 0 }, 'gather_rows');

    const bad = Uint32Array.from([1, 9, 0xffffffff]);
    const out2 = poisoned(owned, [3, C]);
    // poison with zeros this time so the NaN must come from the kernel
    ctx.device.queue.writeBuffer(out2.buffer, 0, new Float32Array(3 * C));
    await run(ctx, [k.bind(owned, { x: upload(owned, x, [T, C]), idx: upload(owned, bad, [3], 'u32'), out: out2 })]);
    const got = await download(ctx, out2);
    allClose(got.subarray(0, C), x.subarray(C, 2 * C), { atol: 0 }, 'gather_rows valid row');
    assert.ok(
      got.subarray(C).every((v) => Number.isNaN(v)),
      'out-of-range rows are NaN',
    );
  }));

test('elementwise kernels reject mismatched shapes and partial overlap', () =>
  withDevice(async ({ ctx, owned }) => {
    const add = await AddKernel.create(ctx);
    assert.throws(
      () => add.bind(owned, { a: poisoned(owned, [10]), b: poisoned(owned, [9]), out: poisoned(owned, [10]) }),
      (e: Error) => e instanceof ShapeError && /b has 9 elements/.test(e.message),
    );
    const gelu = await GeluKernel.create(ctx);
    const t = poisoned(owned, [16]);
    assert.throws(
      () => gelu.bind(owned, { x: { ...t, shape: [8] }, y: { ...t, offset: 16, shape: [8] } }),
      (e: Error) => e instanceof ShapeError && /partly overlaps/.test(e.message),
    );
    const g = await GatherRowsKernel.create(ctx);
    assert.throws(
      () =>
        g.bind(owned, { x: poisoned(owned, [4, 8]), idx: poisoned(owned, [2], 'u32'), out: poisoned(owned, [2, 7]) }),
      (e: Error) => e instanceof ShapeError && /expected shape \[2, 8\], got \[2, 7\]/.test(e.message),
    );
  }));

test.run();
