import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LayerNormKernel } from '../src/kernels/layernorm.js';
import { ShapeError } from '../src/errors.js';
import { allClose, download, poisoned, rejects, Rng, run, upload, withDevice } from './helpers.js';
import { layerNorm64 } from './reference/layernorm.js';

// Odd widths, widths below and above the workgroup size, a large |mean| (tests the two-pass variance).
const SHAPES: Array<[number, number, number]> = [
  [1, 64, 0],
  [3, 768, 0],
  [7, 1600, 5],
  [5, 33, 0],
  [70000, 8, 0], // more rows than one dispatch dimension allows (65535): exercises the y wrap
];

// Threads per row: the GPU profile's 256, the CPU profiles' 8, and 1 (no reduction tree at all).
const WIDTHS = [256, 8, 1];

for (const [rows, C, mean] of SHAPES) {
  test(`layernorm [${rows}, ${C}] mean ${mean} matches float64 at ${WIDTHS.join(', ')} threads per row`, () =>
    withDevice(async ({ ctx, owned }) => {
      const rng = new Rng(rows * 1000 + C);
      const x = rng.normals(rows * C, 2, mean);
      const g = rng.normals(C, 0.5, 1);
      const b = rng.normals(C, 0.2);
      const want = layerNorm64(x, g, b, rows, C, 1e-5);
      const xt = upload(owned, x, [rows, C]);
      const gt = upload(owned, g, [C]);
      const bt = upload(owned, b, [C]);
      for (const wg of WIDTHS) {
        const k = await LayerNormKernel.create(ctx, wg);
        const y = poisoned(owned, [rows, C]);
        const d = k.bind(owned, { x: xt, gamma: gt, beta: bt, y, eps: 1e-5 });
        if (rows > 65535) assert.ok(d.workgroups[1] > 1, 'wrapped into y');
        await run(ctx, [d]);
        allClose(await download(ctx, y), want, { rel: 1e-5, atol: 1e-4 }, `layernorm, ${wg} threads per row`);
      }
    }));
}

test('layernorm refuses a width that is not a power of two or is over the device limit', () =>
  withDevice(async ({ ctx }) => {
    for (const wg of [12, 0, ctx.limits.maxComputeInvocationsPerWorkgroup * 2])
      await rejects(
        () => LayerNormKernel.create(ctx, wg),
        (e) => e instanceof ShapeError && e.message.includes(`${wg} threads per row`),
        `width ${wg}`,
      );
  }));

test('layernorm rejects mismatched shapes with the actual values', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await LayerNormKernel.create(ctx);
    const x = poisoned(owned, [2, 8]);
    assert.throws(
      () =>
        k.bind(owned, {
          x,
          gamma: poisoned(owned, [7]),
          beta: poisoned(owned, [8]),
          y: poisoned(owned, [2, 8]),
          eps: 1e-5,
        }),
      (e: Error) => e instanceof ShapeError && /expected shape \[8\], got \[7\]/.test(e.message),
    );
  }));

test.run();
