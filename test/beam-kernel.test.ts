import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BeamKernel, decodeBeamCandidates } from '../src/kernels/beam.js';
import { ShapeError } from '../src/errors.js';
import { allClose, downloadU32, poisoned, Rng, run, upload, withDevice } from './helpers.js';

/** float64 reference: top k of beamScores[b] + log_softmax(logits[b]), ties to the smaller flat index. */
function beam64(logits: Float32Array, scores: ArrayLike<number>, B: number, V: number, k: number) {
  const sc = new Float64Array(B * V);
  for (let b = 0; b < B; b++) {
    const row = logits.subarray(b * V, (b + 1) * V);
    let m = -Infinity;
    for (const x of row) m = Math.max(m, x);
    let s = 0;
    for (const x of row) s += Math.exp(x - m);
    const lse = m + Math.log(s);
    for (let v = 0; v < V; v++) sc[b * V + v] = scores[b]! + row[v]! - lse;
  }
  // Only candidates at or above the k-th largest score can be in the top k: sort those.
  const kth = Float64Array.from(sc).sort()[sc.length - k]!;
  const top: number[] = [];
  sc.forEach((x, f) => x >= kth && top.push(f));
  top.sort((x, y) => sc[y]! - sc[x]! || x - y).length = k;
  return { parent: top.map((f) => Math.floor(f / V)), token: top.map((f) => f % V), score: top.map((f) => sc[f]!) };
}

const SHAPES: Array<[number, number]> = [
  [1, 50257], // first step: only the prompt row, GPT-2's vocabulary
  [4, 50257],
  [6, 1000],
  [3, 7],
  [3, 2], // K = 2B = B * V: every token is a candidate, rows pad their top-K lists
  [64, 700], // the merge's radix selects over B * K = 8192 candidates
];

for (const [B, V] of SHAPES) {
  test(`beam candidates [${B}, ${V}] match float64 (top ${2 * B}, sorted)`, () =>
    withDevice(async ({ ctx, owned }) => {
      const rng = new Rng(B * 7919 + V);
      const logits = rng.normals(B * V, 3);
      const scores = Float32Array.from({ length: B }, () => -10 * rng.next());
      const k = await BeamKernel.create(ctx);
      const out = poisoned(owned, [2 * B, 3], 'u32');
      await run(
        ctx,
        k.bind(owned, { logits: upload(owned, logits, [B, V]), beamScores: upload(owned, scores, [B]), out }),
      );
      const got = decodeBeamCandidates(await downloadU32(ctx, out));
      const ref = beam64(logits, scores, B, V, 2 * B);
      assert.equal(got.parent, ref.parent, 'parents');
      assert.equal(got.token, ref.token, 'tokens');
      allClose(got.score, ref.score, { atol: 2e-5, rel: 1e-6 }, 'scores');
    }));
}

test('beam candidates: ties go to the smaller flat index b * V + v; logits may be an unaligned view', () =>
  withDevice(async ({ ctx, owned }) => {
    const B = 3;
    const V = 300;
    // Rows 0 and 2 are uniform (every token ties); row 1 has four leaders tied at 5 (ids 250..253)
    // whose score beats the uniform rows. Scores: row 1 = 0 + log-prob, rows 0 and 2 = 0 + log(1/300).
    const logits = new Float32Array(7 + B * V); // 7 floats of padding before the view
    for (let v = 0; v < V; v++) logits[7 + V + v] = v >= 250 && v < 254 ? 5 : -20;
    const buf = upload(owned, logits, [logits.length]);
    const view = { buffer: buf.buffer, offset: 28, shape: [B, V], dtype: 'f32' as const };
    const k = await BeamKernel.create(ctx);
    const out = poisoned(owned, [2 * B, 3], 'u32');
    await run(ctx, k.bind(owned, { logits: view, beamScores: upload(owned, new Float32Array(B), [B]), out }));
    const got = decodeBeamCandidates(await downloadU32(ctx, out));
    assert.equal(got.parent, [1, 1, 1, 1, 0, 0]);
    assert.equal(got.token, [250, 251, 252, 253, 0, 1]);
    allClose(
      got.score,
      [...new Array(4).fill(Math.log(0.25)), -Math.log(300), -Math.log(300)],
      { atol: 1e-5 },
      'scores',
    );
  }));

test('beam candidates: every score tied across 40 rows -> the 80 smallest flat indices, in order', () =>
  withDevice(async ({ ctx, owned }) => {
    const [B, V] = [40, 50];
    const k = await BeamKernel.create(ctx);
    const out = poisoned(owned, [2 * B, 3], 'u32');
    const logits = upload(owned, new Float32Array(B * V), [B, V]);
    await run(ctx, k.bind(owned, { logits, beamScores: upload(owned, new Float32Array(B), [B]), out }));
    const got = decodeBeamCandidates(await downloadU32(ctx, out));
    const flat = Array.from({ length: 2 * B }, (_, i) => i);
    assert.equal(
      got.parent,
      flat.map((f) => Math.floor(f / V)),
    );
    assert.equal(
      got.token,
      flat.map((f) => f % V),
    );
  }));

test('beam candidates reject mismatched shapes with the actual values', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await BeamKernel.create(ctx);
    const logits = poisoned(owned, [2, 10]);
    assert.throws(
      () => k.bind(owned, { logits, beamScores: poisoned(owned, [3]), out: poisoned(owned, [4, 3], 'u32') }),
      (e: Error) => e instanceof ShapeError && /expected shape \[2\], got \[3\]/.test(e.message),
    );
    assert.throws(
      () => k.bind(owned, { logits, beamScores: poisoned(owned, [2]), out: poisoned(owned, [4, 3], 'u32'), k: 21 }),
      (e: Error) => e instanceof ShapeError && /k = 21 must be an integer in \[1, B \* V = 20\]/.test(e.message),
    );
  }));

test.run();
