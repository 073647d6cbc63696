import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeLogprobs, LogprobsKernel, logprobsRowWords, NO_TARGET } from '../src/kernels/logprobs.js';
import { ShapeError } from '../src/errors.js';
import { deviceProfile } from '../src/kernels/profile.js';
import { allClose, downloadU32, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { logprobs64 } from './reference/logprobs.js';

const V = 50257; // GPT-2's vocabulary: not a multiple of the workgroup size

/** Both workgroup sizes: the GPU's (256 threads per row) and the CPU adapters' (8). */
const SIZES = [256, 8];

async function check(x: Float32Array, rows: number, n: number, targets: number[], top: number, what: string) {
  for (const wg of SIZES) await checkWith(wg, x, rows, n, targets, top, `${what} (${wg} threads)`);
}

async function checkWith(
  wg: number,
  x: Float32Array,
  rows: number,
  n: number,
  targets: number[],
  top: number,
  what: string,
) {
  return withDevice(async ({ ctx, owned }) => {
    const k = await LogprobsKernel.create(ctx, wg);
    assert.is(k.wg, wg);
    const out = poisoned(owned, [rows, logprobsRowWords(top)], 'u32');
    const t = upload(owned, Uint32Array.from(targets), [rows], 'u32');
    await run(ctx, [k.bind(owned, { logits: upload(owned, x, [rows, n]), targets: t, out, top })]);
    const got = decodeLogprobs(await downloadU32(ctx, out), rows, top);
    const ref = logprobs64(x, rows, n, targets, top);
    for (let r = 0; r < rows; r++) {
      const g = got[r]!;
      const e = ref[r]!;
      if (Number.isNaN(e.logprob)) assert.ok(Number.isNaN(g.logprob), `${what} row ${r}: no target gives NaN`);
      else allClose([g.logprob], [e.logprob], { atol: 2e-5 }, `${what} row ${r} target log-prob`);
      assert.is(g.argmax, e.argmax, `${what} row ${r} argmax`);
      assert.equal(
        g.top.map((a) => a.id),
        e.top.map((a) => a.id),
        `${what} row ${r} top ids`,
      );
      if (e.top.some((a) => Number.isNaN(a.logprob)))
        // a NaN logit makes the whole row's log-sum-exp NaN: every log-prob says so
        assert.ok(
          g.top.every((a) => Number.isNaN(a.logprob)),
          `${what} row ${r}: NaN log-probs`,
        );
      else
        allClose(
          g.top.map((a) => a.logprob),
          e.top.map((a) => a.logprob),
          { atol: 2e-5 },
          `${what} row ${r} top log-probs`,
        );
    }
  });
}

test('logprobs [4, 50257], top 20: random rows, one shifted by +1000, targets anywhere', () => {
  const rows = 4;
  const x = new Rng(11).normals(rows * V, 3);
  for (let i = 0; i < V; i++) x[V + i]! += 1000; // exp without the max shift overflows
  const targets = [0, 50256, 12345, 777];
  targets.forEach((t, r) => (x[r * V + t]! += 2)); // make the targets plausible tokens
  return check(x, rows, V, targets, 20, 'random');
});

test('logprobs: ties go to the smaller id, within and across threads; NaN never ranks; no target', () => {
  const rows = 3;
  const x = new Rng(3).normals(rows * V);
  const row = (r: number) => x.subarray(r * V, (r + 1) * V);
  row(0)[9] = 40;
  row(0)[5] = 40;
  row(0)[257] = 40; // thread 1 holds 257, thread 5 holds 5 and thread 9 holds 9
  row(0)[256 * 100 + 5] = 40; // the same thread (5) sees an equal value later
  row(1)[3] = NaN;
  row(1)[4000] = 30;
  row(2).fill(-1);
  row(2)[1] = 0; // mostly ties: the top list walks ids 0, 2, 3, ...
  return check(x, rows, V, [5, 4000, NO_TARGET], 6, 'ties');
});

for (const [rows, n, top] of [
  [1, 1, 0],
  [3, 7, 20], // fewer ids than the top asked: the rest is NONE with -inf
  [300, 97, 3], // more rows than one dispatch row of small sizes would need
] as const) {
  test(`logprobs [${rows}, ${n}] top ${top}`, () => {
    const x = new Rng(rows * n).normals(rows * n, 2);
    const targets = Array.from({ length: rows }, (_, r) => (r * 31) % n);
    if (top > n) {
      return withDevice(async ({ ctx, owned }) => {
        const k = await LogprobsKernel.create(ctx, 8);
        const out = poisoned(owned, [rows, logprobsRowWords(top)], 'u32');
        const t = upload(owned, Uint32Array.from(targets), [rows], 'u32');
        await run(ctx, [k.bind(owned, { logits: upload(owned, x, [rows, n]), targets: t, out, top })]);
        const got = decodeLogprobs(await downloadU32(ctx, out), rows, top);
        const ref = logprobs64(x, rows, n, targets, n);
        for (let r = 0; r < rows; r++) {
          assert.equal(
            got[r]!.top.slice(0, n).map((a) => a.id),
            ref[r]!.top.map((a) => a.id),
            `row ${r} ids`,
          );
          assert.ok(
            got[r]!.top.slice(n).every((a) => a.id === NO_TARGET && a.logprob === -Infinity),
            `row ${r} padding`,
          );
        }
      });
    }
    return check(x, rows, n, targets, top, `[${rows}, ${n}]`);
  });
}

test("logprobs refuses a top past 20, a mis-shaped output and a workgroup size not a power of two; the profile's width (8 threads per row on CPU adapters)", () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await LogprobsKernel.create(ctx, deviceProfile(ctx).logprobsWg);
    assert.is(k.wg, ctx.isCpuAdapter ? 8 : 256);
    for (const wg of [12, 0, 512])
      await LogprobsKernel.create(ctx, wg).then(
        () => assert.unreachable(`wg ${wg} accepted`),
        (e: Error) => assert.ok(e instanceof ShapeError && /wg must be a power of two/.test(e.message), e.message),
      );
    const logits = upload(owned, new Float32Array(10), [2, 5]);
    const targets = upload(owned, new Uint32Array(2), [2], 'u32');
    assert.throws(
      () => k.bind(owned, { logits, targets, out: poisoned(owned, [2, 44], 'u32'), top: 21 }),
      (e: Error) => e instanceof ShapeError && /top must be an integer in \[0, 20\], got 21/.test(e.message),
    );
    assert.throws(
      () => k.bind(owned, { logits, targets, out: poisoned(owned, [2, 4], 'u32'), top: 2 }),
      (e: Error) => e instanceof ShapeError,
    );
  }));

test.run();
