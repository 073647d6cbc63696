import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ArgmaxKernel, SoftmaxKernel } from './kernels/softmax.js';
import { ShapeError } from '../src/errors.js';
import { allClose, download, downloadU32, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { argmax64, softmax64 } from './reference/softmax.js';

const V = 50257; // GPT-2's vocabulary: not a multiple of the workgroup size

test('softmax [3, 50257]: random, shifted by +1000 (stability), masked -inf entries', () =>
  withDevice(async ({ ctx, owned }) => {
    const rows = 3;
    const rng = new Rng(50257);
    const x = rng.normals(rows * V, 3);
    for (let i = 0; i < V; i++) x[V + i]! += 1000; // row 1: exp without the max shift overflows
    x[V + 17] = 1012; // and a clear winner
    for (let i = 0; i < V; i += 3) x[2 * V + i] = -Infinity; // row 2: masked logits
    const k = await SoftmaxKernel.create(ctx);
    const y = poisoned(owned, [rows, V]);
    await run(ctx, [k.bind(owned, { x: upload(owned, x, [rows, V]), y })]);
    const got = await download(ctx, y);
    const ref = softmax64(x, rows, V);
    for (let r = 0; r < rows; r++) {
      const g = got.subarray(r * V, (r + 1) * V);
      const e = ref.subarray(r * V, (r + 1) * V);
      allClose(g, e, { rel: 1e-5, atol: 1e-9, rtol: 1e-4 }, `softmax row ${r}`);
    }
    for (let i = 0; i < V; i += 3) assert.is(got[2 * V + i], 0, `masked logit ${i} gives exactly 0`);
  }));

for (const [rows, n] of [
  [5, 7],
  [2, 300],
  [1, 1],
] as const) {
  test(`softmax in place [${rows}, ${n}]`, () =>
    withDevice(async ({ ctx, owned }) => {
      const x = new Rng(n).normals(rows * n, 4);
      const k = await SoftmaxKernel.create(ctx);
      const t = upload(owned, x, [rows, n]);
      await run(ctx, [k.bind(owned, { x: t, y: t })]);
      allClose(await download(ctx, t), softmax64(x, rows, n), { rel: 1e-5, atol: 1e-7 }, 'softmax in place');
    }));
}

test('argmax [7, 50257]: ties -> smallest index (within and across threads), NaN never wins', () =>
  withDevice(async ({ ctx, owned }) => {
    const rows = 7;
    const x = new Rng(7).normals(rows * V);
    const row = (r: number) => x.subarray(r * V, (r + 1) * V);
    row(0).set([100], 9);
    row(0).set([100], 5); // the max at indices 9 and 5 -> 5
    row(1)[200] = 50;
    row(1)[257] = 50; // thread 1 holds 257, thread 200 holds 200: the merge must prefer 200
    row(1)[256 * 100 + 200] = 50; // and the same thread (200) sees it later
    row(2)[0] = NaN; // NaN first in thread 0's stride, and where the max would be
    row(2)[1000] = NaN;
    row(2)[4321] = 30;
    row(3).fill(-Infinity);
    row(3)[77] = NaN; // only -inf and NaN: the first -inf (index 0) wins
    row(4).fill(NaN); // nothing valid -> 0xFFFFFFFF
    row(5)[V - 1] = 40; // max at the last index
    row(6).fill(1.5); // all equal -> 0
    const k = await ArgmaxKernel.create(ctx);
    const out = poisoned(owned, [rows], 'u32');
    await run(ctx, [k.bind(owned, { x: upload(owned, x, [rows, V]), out })]);
    const got = Array.from(await downloadU32(ctx, out));
    const ref = Array.from(argmax64(x, rows, V));
    assert.equal(got, ref);
    assert.equal(ref.slice(0, 2), [5, 200]); // the reference agrees with the intent
    assert.is(ref[4], 0xffffffff);
  }));

test('argmax with V below the workgroup size and many rows', () =>
  withDevice(async ({ ctx, owned }) => {
    const rows = 300,
      n = 13;
    const rng = new Rng(13);
    const x = new Float32Array(rows * n);
    for (let i = 0; i < x.length; i++) x[i] = rng.int(4); // many ties
    const k = await ArgmaxKernel.create(ctx);
    const out = poisoned(owned, [rows], 'u32');
    await run(ctx, [k.bind(owned, { x: upload(owned, x, [rows, n]), out })]);
    assert.equal(Array.from(await downloadU32(ctx, out)), Array.from(argmax64(x, rows, n)));
  }));

test('softmax/argmax reject mismatched shapes with the actual values', () =>
  withDevice(async ({ ctx, owned }) => {
    const sm = await SoftmaxKernel.create(ctx);
    assert.throws(
      () => sm.bind(owned, { x: poisoned(owned, [2, 10]), y: poisoned(owned, [2, 9]) }),
      (e: Error) => e instanceof ShapeError && /expected shape \[2, 10\], got \[2, 9\]/.test(e.message),
    );
    const am = await ArgmaxKernel.create(ctx);
    assert.throws(
      () => am.bind(owned, { x: poisoned(owned, [3, 10]), out: poisoned(owned, [3], 'f32') }),
      (e: Error) => e instanceof ShapeError && /expected dtype u32, got f32/.test(e.message),
    );
  }));

test.run();
