/**
 * Quantized weights (src/kernels/quant.ts): quantize / dequantize / packInts against hand-computed
 * cases, and every matmul path the device profiles use (gemv_kn split across workgroups + reduce,
 * gemv_kn_red, the tiled GEMM 'kn' and 'nk', gemv_nk, gemv_kn_cols plain and in panels,
 * gemm_kn_sg at every lane count the device runs, the chunked LM head over a 50257-row wte plain
 * and transposed in panels) and the embedding gather, on q8 and q4 weights, against the float64
 * reference on the dequantized weights.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MatmulKernel, MatmulProfile, WeightLayout } from '../src/kernels/matmul.js';
import { packPanels, packWteRows } from '../src/kernels/matmul-pack.js';
import { PROFILES } from '../src/kernels/profile.js';
import { dequantize, packInts, quantize, scaleGroups, scaleStride, type QuantDType } from '../src/kernels/quant.js';
import { EmbeddingKernel } from '../src/kernels/embedding.js';
import { ChunkedTensor, GpuTensor, Owned } from '../src/gpu/common.js';
import { ShapeError } from '../src/errors.js';
import type { GpuContext } from '../src/gpu/device.js';
import { allClose, download, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { matmul64 } from './reference/matmul.js';
import { bindCase } from './matmul-util.js';

const TOL = { rel: 1e-5, atol: 2e-5, rtol: 1e-4 };
const FORMATS: QuantDType[] = ['q8', 'q4'];

test('quantize q8 per output column: scale max|w| / 127, round half away from zero, zero columns', () => {
  // Conv1D [K 2, N 3]: column maxima 127, 254, 0
  const w = [127, -254, 0, -63.5, 100, 0];
  const qz = quantize(w, 2, 3, 'q8', 'rows');
  assert.equal(Array.from(qz.scales), [1, 2, 0, 0, 0, 0, 0, 0], 'one scale per column, padded to 8');
  assert.equal(Array.from(qz.q), [127, -127, 0, -64, 50, 0], '-63.5 rounds away from zero');
  assert.equal(Array.from(dequantize(qz, 2, 3, 'q8', 'rows')), [127, -254, 0, -64, 100, 0]);
  // wte [N 2, K 3]: one scale per row (its output column in the LM head)
  const e = quantize([127, 0, -127, 1, 2, -254], 2, 3, 'q8', 'cols');
  assert.equal(Array.from(e.scales), [1, 2, 0, 0, 0, 0, 0, 0]);
  assert.equal(Array.from(e.q), [127, 0, -127, 1, 1, -127], '0.5 rounds to 1');
});

test('quantize q4 in groups of 32 along K: scale max|w| / 7 per group, the last group short', () => {
  // One column, K 40: group 0 = k 0..31 (max 7 -> scale 1), group 1 = k 32..39 (max 14 -> scale 2)
  const w = new Float32Array(40);
  w.set([7, -3.5, 2.4], 0);
  w.set([-14, 5, 1, -0.9], 32);
  const qz = quantize(w, 40, 1, 'q4', 'rows');
  assert.is(scaleGroups('q4', 40), 2);
  assert.equal(Array.from(qz.scales), [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
  const want = new Float32Array(40);
  want.set([7, -4, 2], 0);
  want.set([-7, 3, 1, 0], 32);
  assert.equal(Array.from(qz.q), Array.from(want), 'ties away from zero; -0.45 -> 0');
  const back = dequantize(qz, 40, 1, 'q4', 'rows');
  assert.equal(Array.from(back.subarray(0, 3)), [7, -4, 2]);
  assert.equal(Array.from(back.subarray(32, 36)), [-14, 6, 2, 0]);
});

test('packInts: two-complement bytes / nibbles along the last dimension, rows padded to whole words', () => {
  assert.equal(Array.from(packInts([1, -1, 127, -127, 5], 1, 5, 'q8')), [0x817fff01, 0x05]);
  assert.equal(Array.from(packInts([1, -1, 7, -7, 0, 0, 0, 3, 2], 1, 9, 'q4')), [0x300097f1, 0x2]);
  // two rows of 3: each row its own word
  assert.equal(Array.from(packInts([1, 2, 3, -1, -2, -3], 2, 3, 'q4')), [0x321, 0xdef]);
  assert.throws(
    () => quantize([1, 2, 3], 2, 2, 'q8', 'rows'),
    (e: Error) => e instanceof ShapeError && /3 values for a \[2, 2\] matrix/.test(e.message),
  );
});

/** A quantized weight uploaded as the engine stores it (plain, or 'kn' in column panels), and the values it stands for. */
function quantWeight(
  owned: Owned,
  rng: Rng,
  dtype: QuantDType,
  K: number,
  N: number,
  layout: WeightLayout,
  panel?: number,
): { t: GpuTensor; seen: Float32Array } {
  const [rows, cols] = layout === 'kn' ? [K, N] : [N, K];
  const w = rng.normals(rows * cols, 1 / Math.sqrt(K));
  const kAxis = layout === 'kn' ? 'rows' : 'cols';
  const qz = quantize(w, rows, cols, dtype, kAxis);
  const seen = dequantize(qz, rows, cols, dtype, kAxis);
  const laid = panel ? packPanels(qz.q, rows, cols, panel) : qz.q;
  const [sr, sc] = panel ? [Math.ceil(cols / panel) * rows, panel] : [rows, cols];
  const t = upload(owned, packInts(laid, sr, sc, dtype), [rows, cols], dtype);
  if (panel) t.panel = panel;
  t.scales = upload(owned, qz.scales, [scaleGroups(dtype, K), scaleStride(N)]);
  return { t, seen };
}

/**
 * wte [V, C] quantized in chunks of `rpc` rows (groups along C, as the engine does), each uploaded
 * plain [n, C] and transposed in panels of `panel` ([C, n]), sharing its scales; and the values
 * they stand for.
 */
function wteChunks(
  owned: Owned,
  wte: Float32Array,
  V: number,
  C: number,
  rpc: number,
  panel: number,
  dtype: QuantDType,
): { plain: GpuTensor[]; panels: GpuTensor[]; seen: Float32Array } {
  const plain: GpuTensor[] = [];
  const panels: GpuTensor[] = [];
  const seen = new Float32Array(V * C);
  for (let r = 0; r < V; r += rpc) {
    const n = Math.min(rpc, V - r);
    const rows = wte.subarray(r * C, (r + n) * C);
    seen.set(dequantize(quantize(rows, n, C, dtype, 'cols'), n, C, dtype, 'cols'), r * C);
    // The engine's layouts (weights.ts uploads wte chunks through packWteRows).
    const a = packWteRows(rows, n, C, dtype);
    const b = packWteRows(rows, n, C, dtype, panel);
    const scales = upload(owned, a.scales!, [scaleGroups(dtype, C), scaleStride(n)]);
    plain.push({ ...upload(owned, a.data, [n, C], dtype), scales });
    panels.push({ ...upload(owned, b.data, [C, n], dtype), panel, scales });
  }
  return { plain, panels, seen };
}

const GPU: MatmulProfile = { ...PROFILES.gpu.matmul };
const COLS: MatmulProfile = { ...PROFILES.cpu.matmul, panel: 0 };

/** Every 'kn' route: gemv_kn (+ reduce), gemv_kn_red, the GEMM, gemv_kn_cols, gemm_kn_sg at each lane count the device runs. */
async function kernels(ctx: GpuContext, dtype: QuantDType): Promise<Array<[string, MatmulKernel]>> {
  const size = ctx.features.subgroupSize;
  const lanes: Array<4 | 8> = size === 8 ? [8, 4] : size === 4 ? [4] : [];
  const mk = (p: MatmulProfile) => MatmulKernel.create(ctx, p, undefined, [dtype]);
  return [
    ['threads split', await mk({ ...GPU, splitK: 'split' })],
    ['threads workgroup', await mk(GPU)],
    ['cols', await mk(COLS)],
    ...(await Promise.all(
      lanes.map(async (l): Promise<[string, MatmulKernel]> => [`sg ${l}`, await mk({ ...COLS, subgroupLanes: l })]),
    )),
  ];
}

interface Case {
  M: number;
  K: number;
  N: number;
  layout: WeightLayout;
  bias?: boolean;
  gelu?: boolean;
  acc?: boolean;
  splitK?: number;
}

const CASES: Case[] = [
  { M: 1, K: 768, N: 3072, layout: 'kn', bias: true, gelu: true },
  { M: 2, K: 3072, N: 768, layout: 'kn', bias: true, acc: true },
  { M: 5, K: 77, N: 33, layout: 'kn', bias: true }, // unaligned rows: the scalar paths
  { M: 1, K: 67, N: 40, layout: 'kn', gelu: true }, // K past whole groups of 32
  { M: 9, K: 130, N: 264, layout: 'kn', acc: true }, // gemm_kn_sg (8 rows), the GEMM
  { M: 37, K: 96, N: 72, layout: 'kn', bias: true, gelu: true, acc: true }, // gemm_kn_sg (16 rows)
  { M: 1, K: 257, N: 136, layout: 'kn', bias: true, splitK: 4 },
  { M: 3, K: 257, N: 44, layout: 'kn', acc: true, splitK: 3 },
  { M: 130, K: 257, N: 129, layout: 'kn', gelu: true },
  { M: 1, K: 768, N: 1001, layout: 'nk', acc: true },
  { M: 5, K: 77, N: 33, layout: 'nk', bias: true },
  { M: 3, K: 256, N: 203, layout: 'nk', bias: true, splitK: 3 },
  { M: 37, K: 72, N: 130, layout: 'nk', bias: true, gelu: true },
  { M: 2, K: 40, N: 50, layout: 'nk', acc: true },
];

for (const dtype of FORMATS) {
  test(`${dtype} matmul: every route, odd shapes, plain and paneled W, match float64 on the dequantized weights`, () =>
    withDevice(async ({ ctx, owned }) => {
      const ks = await kernels(ctx, dtype);
      for (const c of CASES) {
        const rng = new Rng(c.M * 7919 + c.K * 31 + c.N + (dtype === 'q4' ? 1 : 0));
        const x = rng.normals(c.M * c.K);
        const W = quantWeight(owned, rng, dtype, c.K, c.N, c.layout);
        const bias = c.bias ? rng.normals(c.N, 0.5) : undefined;
        const base = c.acc ? rng.normals(c.M * c.N) : undefined;
        const ref = matmul64(x, W.seen, c.M, c.K, c.N, { layout: c.layout, bias, gelu: c.gelu, base });
        const xt = upload(owned, x, [c.M, c.K]);
        const bt = bias && upload(owned, bias, [c.N]);
        // 'kn' panels (the CPU profiles' layout): where gemv_kn_cols / gemm_kn_sg read them (N % 8 == 0)
        const paneled =
          c.layout === 'kn' && c.N % 8 === 0 ? quantWeight(owned, new Rng(1), dtype, c.K, c.N, 'kn', 64) : undefined;
        const pref = paneled && matmul64(x, paneled.seen, c.M, c.K, c.N, { layout: 'kn', bias, gelu: c.gelu, base });
        for (const [kname, k] of ks) {
          if (c.layout === 'nk' && k.profile.gemv === 'cols' && kname !== 'cols') continue;
          const variants = k.profile.gemvMaxM !== null && c.M > 8 ? (['gemm', 'gemv'] as const) : [undefined];
          const runs: Array<[string, GpuTensor, Float64Array, 'gemm' | 'gemv' | undefined]> = variants.map((v) => [
            `${kname} ${v ?? ''}`,
            W.t,
            ref,
            v,
          ]);
          if (paneled && k.profile.gemv === 'cols') runs.push([`${kname} panels`, paneled.t, pref!, undefined]);
          for (const [what, wt, want, variant] of runs) {
            const { out, ds } = bindCase(owned, k, c, { x: xt, w: wt, bias: bt, base }, variant);
            await run(ctx, ds);
            const label = `${dtype} ${c.layout} M ${c.M} K ${c.K} N ${c.N}${c.splitK ? ` splitK ${c.splitK}` : ''} (${what})`;
            allClose(await download(ctx, out), want, TOL, label);
          }
        }
      }
    }));

  test(`${dtype} LM head over a 50257 x 768 wte in chunks: plain 'nk' (gemv_nk, the GEMM) and transposed in panels (gemv_kn_cols, gemm_kn_sg)`, () =>
    withDevice(async ({ ctx, owned }) => {
      const V = 50257;
      const C = 768;
      const rowsPerChunk = 16384;
      const rng = new Rng(dtype === 'q8' ? 5 : 6);
      const wte = rng.normals(V * C, 0.05);
      const { plain, panels, seen } = wteChunks(owned, wte, V, C, rowsPerChunk, 256, dtype);
      const chunked = (chunks: GpuTensor[], transposed: boolean): ChunkedTensor => ({
        shape: [V, C],
        dtype,
        rowsPerChunk,
        chunks,
        ...(transposed ? { transposed: true } : {}),
      });
      const size = ctx.features.subgroupSize;
      const lanes = size === 8 || size === 4 ? size : 0;
      const mk = (p: MatmulProfile) => MatmulKernel.create(ctx, p, undefined, [dtype]);
      const gpu = await mk(GPU);
      const cpu = await mk({ ...PROFILES.cpu.matmul, subgroupLanes: lanes });
      for (const M of [1, 3, 9]) {
        const x = rng.normals(M * C);
        const ref = matmul64(x, seen, M, C, V, { layout: 'nk' });
        const xt = upload(owned, x, [M, C]);
        for (const [what, k, w] of [
          ['gpu profile, plain chunks', gpu, chunked(plain, false)],
          ['cpu profile, transposed panels', cpu, chunked(panels, true)],
        ] as const) {
          const out = poisoned(owned, [M, V]);
          await run(ctx, k.bind(owned, { x: xt, w, layout: 'nk', out }));
          allClose(await download(ctx, out), ref, TOL, `${dtype} LM head M ${M} (${what})`);
        }
      }
    }));

  test(`${dtype} embedding gather: wte chunks plain and transposed in panels, f16 wpe, match the dequantized rows`, () =>
    withDevice(async ({ ctx, owned }) => {
      const [V, C, P, rpc] = [301, 72, 16, 128];
      const rng = new Rng(dtype === 'q8' ? 11 : 12);
      const wte = rng.normals(V * C);
      const wpe = rng.normals(P * C);
      const k = await EmbeddingKernel.create(ctx);
      const { plain, panels, seen } = wteChunks(owned, wte, V, C, rpc, 64, dtype);
      const ids = [0, 5, 127, 128, 300, 200, 1];
      const T = ids.length;
      const want = new Float32Array(T * C);
      ids.forEach((id, t) => {
        for (let c = 0; c < C; c++) want[t * C + c] = seen[id * C + c]! + wpe[t * C + c]!;
      });
      for (const [what, chunks, transposed] of [
        ['plain', plain, false],
        ['transposed panels', panels, true],
      ] as const) {
        const out = poisoned(owned, [T, C]);
        const meta = Uint32Array.from(ids.flatMap((_, t) => [0, t]));
        await run(
          ctx,
          k.bind(owned, {
            ids: upload(owned, Uint32Array.from(ids), [T], 'u32'),
            meta: upload(owned, meta, [T, 2], 'u32'),
            wte: { shape: [V, C], dtype, rowsPerChunk: rpc, chunks, ...(transposed ? { transposed: true } : {}) },
            wpe: upload(owned, wpe, [P, C]),
            out,
          }),
        );
        allClose(await download(ctx, out), want, { rel: 1e-6, atol: 1e-6 }, `${dtype} embedding (${what})`);
      }
    }));
}

test('a quantized W without its scales, or with scales of the wrong shape, is refused by name', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await MatmulKernel.create(ctx, COLS, undefined, ['q8']);
    const rng = new Rng(3);
    const W = quantWeight(owned, rng, 'q8', 64, 40, 'kn');
    const x = upload(owned, rng.normals(64), [1, 64]);
    const out = poisoned(owned, [1, 40]);
    assert.throws(
      () => k.bind(owned, { x, w: { ...W.t, scales: undefined }, layout: 'kn', out }),
      (e: Error) => e instanceof ShapeError && /needs its scales/.test(e.message),
    );
    const bad = upload(owned, new Float32Array(2 * 40), [2, 40]);
    assert.throws(
      () => k.bind(owned, { x, w: { ...W.t, scales: bad }, layout: 'kn', out }),
      (e: Error) => e instanceof ShapeError && /scales/.test(e.message),
    );
  }));

test.run();
