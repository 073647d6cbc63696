import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { GEMV_MAX_M, MatmulKernel, MatmulProfile, WeightLayout } from '../src/kernels/matmul.js';
import { packPanels, packPanelsTransposed } from '../src/kernels/matmul-pack.js';
import { deviceProfile, PROFILES } from '../src/kernels/profile.js';
import { packF16, unpackF16 } from '../src/kernels/f16.js';
import { ChunkedTensor, GpuTensor, Owned } from '../src/gpu/common.js';
import { InvalidOptionError, ShapeError } from '../src/errors.js';
import type { GpuContext } from '../src/gpu/device.js';
import { allClose, download, poisoned, rejects, Rng, run, STORAGE, upload, withDevice } from './helpers.js';
import { matmul64 } from './reference/matmul.js';
import { bindCase } from './matmul-util.js';
import { layerNorm64 } from './reference/layernorm.js';

interface Case {
  M: number;
  K: number;
  N: number;
  layout: WeightLayout;
  dtype: 'f32' | 'f16';
  bias?: boolean;
  gelu?: boolean;
  acc?: boolean;
  variant?: 'gemv' | 'gemm';
  splitK?: number;
}

const TOL = { rel: 1e-5, atol: 2e-5, rtol: 1e-4 };

/** The GPU profile's matmul choices: gemv_kn_red, gemv_nk, the 64 x 64 GEMM past 8 rows, plain weights. */
const GPU: MatmulProfile = { ...PROFILES.gpu.matmul };
/** The CPU profiles' gemv_kn_cols at every M, here with plain weights (panel 0: also the 'nk' GEMV). */
const COLS: MatmulProfile = { ...PROFILES.cpu.matmul, panel: 0 };

/** A kernel with these matmul choices over `base`. */
function kernel(ctx: GpuContext, over: Partial<MatmulProfile> = {}, base = GPU): Promise<MatmulKernel> {
  return MatmulKernel.create(ctx, { ...base, ...over });
}

/** The subgroup GEMM lane counts this device runs: its own subgroup size (4 or 8), and 4 on 8-lane devices (SwiftShader's form). */
function subgroupLanes(ctx: GpuContext): Array<4 | 8> {
  const size = ctx.features.subgroupSize;
  return size === 8 ? [8, 4] : size === 4 ? [4] : [];
}

/**
 * The kernels to run a layout through, whatever the adapter: 'kn' takes gemv_kn (K split across
 * workgroups, + reduce), gemv_kn_red (inside them), gemv_kn_cols, and gemm_kn_sg (from 8 rows) at
 * every lane count the device runs; 'nk' gemv_nk.
 */
async function kernelsFor(ctx: GpuContext, layout: WeightLayout): Promise<MatmulKernel[]> {
  if (layout === 'nk') return [await kernel(ctx)];
  return [
    await kernel(ctx, { splitK: 'split' }),
    await kernel(ctx),
    await kernel(ctx, {}, COLS),
    ...(await Promise.all(subgroupLanes(ctx).map((l) => kernel(ctx, { subgroupLanes: l }, COLS)))),
  ];
}

/** Workgroups along x and z of an 'nk' GEMV (gemv_nk: 8 W rows per workgroup, blocks of 8 rows of x), to check which one ran. */
function nkGroups(M: number, n: number): [number, number] {
  return [Math.ceil(n / 8), Math.ceil(M / 8)];
}

/**
 * Workgroups along x and z of a 'kn' GEMV over M rows of x (K long) and n columns, per kernel (to
 * check which one ran): gemv_kn 64 threads of 1 word, blocks of 8 rows; gemv_kn_red 4 column
 * threads of 1 word (x 64 K groups), blocks of 8 rows; gemm_kn_sg (8+ rows, K % 4 == 0, no split)
 * 4 or 8 lanes of 1 word, blocks of 8 (M < 16) or 16 rows; gemv_kn_cols 8 threads of 8 f32 / 4 f16
 * words (M = 1), of 4 / 2 words for blocks of 4 rows (M > 1).
 */
function knGroups(
  k: MatmulKernel,
  M: number,
  n: number,
  dtype: 'f32' | 'f16',
  K: number,
  splitK?: number,
): [number, number] {
  const words = Math.ceil(n / (dtype === 'f16' ? 8 : 4)); // 16-byte words per W row
  const p = k.profile;
  if (p.gemv === 'threads') return [Math.ceil(words / (p.splitK === 'workgroup' ? 4 : 64)), Math.ceil(M / 8)];
  if (k.takesSubgroups(M, K, splitK)) return [Math.ceil(words / p.subgroupLanes), Math.ceil(M / (M >= 16 ? 16 : 8))];
  const t = M === 1 ? { rows: 1, f32: 8, f16: 4 } : { rows: 4, f32: 4, f16: 2 };
  return [Math.ceil(Math.ceil(words / t[dtype]) / 8), Math.ceil(M / t.rows)];
}

/** A kernel's choices, for messages. */
function what(k: MatmulKernel): string {
  const p = k.profile;
  return p.gemv === 'threads' ? `threads ${p.splitK}` : `cols sg ${p.subgroupLanes}`;
}

function name(c: Case): string {
  const opts = [
    c.bias && 'bias',
    c.gelu && 'gelu',
    c.acc && 'accumulate',
    c.variant,
    c.splitK && `splitK ${c.splitK}`,
  ].filter(Boolean);
  return `matmul ${c.layout} ${c.dtype} M ${c.M} K ${c.K} N ${c.N}${opts.length ? ' ' + opts.join(' ') : ''}`;
}

/** W as stored ([K, N] or [N, K]) and the values the GPU sees (f16-rounded for f16). */
function makeWeight(rng: Rng, c: { K: number; N: number; layout: WeightLayout; dtype: 'f32' | 'f16' }) {
  const [rows, cols] = c.layout === 'kn' ? [c.K, c.N] : [c.N, c.K];
  // std 1/sqrt(K) keeps outputs O(1), so the absolute tolerance means the same at every K.
  const w = rng.normals(rows * cols, 1 / Math.sqrt(c.K));
  if (c.dtype === 'f32') return { rows, cols, data: w as Float32Array | Uint32Array, seen: w };
  const packed = packF16(w, rows, cols);
  // A row's padding half (odd cols) is NaN here: the kernels must never let it reach a sum.
  if (cols % 2 === 1) for (let r = 0; r < rows; r++) packed[r * ((cols + 1) / 2) + (cols - 1) / 2]! |= 0x7e00 << 16;
  return { rows, cols, data: packed as Float32Array | Uint32Array, seen: unpackF16(packed, rows, cols) };
}

for (const c of [
  // decode GEMV (M <= 8): vec4 paths (N % 8 == 0 / K % 8 == 0), split-K chosen for narrow N by gemv_kn
  { M: 1, K: 768, N: 3072, layout: 'kn', dtype: 'f32', bias: true, gelu: true },
  { M: 1, K: 768, N: 3072, layout: 'kn', dtype: 'f16', bias: true, gelu: true },
  { M: 2, K: 3072, N: 768, layout: 'kn', dtype: 'f32', bias: true, acc: true },
  { M: 2, K: 3072, N: 768, layout: 'kn', dtype: 'f16', bias: true, acc: true },
  { M: 5, K: 768, N: 256, layout: 'nk', dtype: 'f32', bias: true },
  { M: 5, K: 768, N: 256, layout: 'nk', dtype: 'f16', acc: true },
  // odd sizes: the scalar paths, f16 rows with a padding half
  { M: 5, K: 33, N: 77, layout: 'kn', dtype: 'f32', bias: true },
  { M: 1, K: 77, N: 33, layout: 'kn', dtype: 'f16', bias: true, gelu: true },
  { M: 2, K: 257, N: 33, layout: 'nk', dtype: 'f32', bias: true, gelu: true },
  { M: 5, K: 77, N: 33, layout: 'nk', dtype: 'f16', acc: true },
  { M: 2, K: 257, N: 77, layout: 'kn', dtype: 'f32', splitK: 3 }, // uneven last slice
  { M: 3, K: 257, N: 77, layout: 'nk', dtype: 'f16', bias: true, acc: true, splitK: 5 },
  { M: 1, K: 768, N: 768, layout: 'nk', dtype: 'f16', bias: true, splitK: 7 }, // vec path, split
  // M = 1 nk (the LM head at batch 1): N not a multiple of the 8 rows per workgroup of gemv_nk
  { M: 1, K: 768, N: 2050, layout: 'nk', dtype: 'f32', bias: true, gelu: true },
  { M: 1, K: 768, N: 1001, layout: 'nk', dtype: 'f16', acc: true },
  { M: 1, K: 256, N: 203, layout: 'nk', dtype: 'f32', acc: true, splitK: 3 },
  { M: 1, K: 77, N: 33, layout: 'nk', dtype: 'f16', bias: true }, // unaligned rows: the scalar path
  // M = 1 kn with aligned rows (gemv_kn_cols: 8 f32 / 4 f16 16-byte words per thread by default):
  // N not a multiple of the columns per thread, so the last thread owns words past the row end;
  // 8 threads per workgroup, so the wider N have several workgroups
  { M: 1, K: 40, N: 36, layout: 'kn', dtype: 'f32', bias: true, acc: true },
  { M: 1, K: 67, N: 200, layout: 'kn', dtype: 'f32', gelu: true },
  { M: 1, K: 67, N: 40, layout: 'kn', dtype: 'f16', bias: true, gelu: true },
  { M: 1, K: 130, N: 264, layout: 'kn', dtype: 'f16', acc: true },
  { M: 1, K: 257, N: 44, layout: 'kn', dtype: 'f32', bias: true, acc: true, splitK: 3 },
  { M: 1, K: 257, N: 136, layout: 'kn', dtype: 'f16', bias: true, gelu: true, splitK: 4 },
  // M > 1 nk with aligned rows: N not a multiple of the W rows per workgroup, M past one block
  { M: 2, K: 768, N: 203, layout: 'nk', dtype: 'f32', bias: true, gelu: true },
  { M: 3, K: 64, N: 50, layout: 'nk', dtype: 'f16', acc: true },
  { M: 5, K: 256, N: 1001, layout: 'nk', dtype: 'f32', bias: true, acc: true },
  { M: 9, K: 72, N: 130, layout: 'nk', dtype: 'f16', bias: true, gelu: true },
  { M: 37, K: 40, N: 66, layout: 'nk', dtype: 'f32', bias: true, acc: true },
  { M: 3, K: 256, N: 203, layout: 'nk', dtype: 'f16', bias: true, splitK: 3 },
  // M > 1 kn with aligned rows (gemv_kn_cols with blocks of 4 rows x 4 f32 / 2 f16 words): N not
  // a multiple of the columns per thread, M not a multiple of the rows per thread
  { M: 2, K: 40, N: 36, layout: 'kn', dtype: 'f32', bias: true, acc: true },
  { M: 3, K: 67, N: 200, layout: 'kn', dtype: 'f32', bias: true, gelu: true },
  { M: 5, K: 67, N: 40, layout: 'kn', dtype: 'f16', bias: true, gelu: true },
  { M: 9, K: 130, N: 264, layout: 'kn', dtype: 'f16', acc: true },
  { M: 37, K: 33, N: 52, layout: 'kn', dtype: 'f32', bias: true, gelu: true, acc: true },
  { M: 3, K: 257, N: 44, layout: 'kn', dtype: 'f32', bias: true, acc: true, splitK: 3 },
  { M: 5, K: 257, N: 136, layout: 'kn', dtype: 'f16', bias: true, gelu: true, splitK: 4 },
  // 8+ rows kn with aligned rows and K % 4 == 0 (gemm_kn_sg where the adapter has 4- or 8-lane
  // subgroups: lanes of one 16-byte word, blocks of 8 rows below 16, else 16): N not a multiple
  // of a workgroup's 32 f32 / 64 f16 columns (lanes past the row end), M not a multiple of the
  // block (rows past M), one or several blocks and workgroups, every epilogue
  { M: 8, K: 64, N: 36, layout: 'kn', dtype: 'f32', bias: true, acc: true },
  { M: 15, K: 132, N: 264, layout: 'kn', dtype: 'f16', gelu: true },
  { M: 16, K: 40, N: 200, layout: 'kn', dtype: 'f32', bias: true, gelu: true, acc: true },
  { M: 45, K: 96, N: 72, layout: 'kn', dtype: 'f16', bias: true, acc: true },
  // GEMV past one block of 8 rows (batched decode), GEMM at tiny M
  { M: 37, K: 64, N: 40, layout: 'kn', dtype: 'f16', bias: true, variant: 'gemv' },
  { M: 37, K: 64, N: 40, layout: 'nk', dtype: 'f32', acc: true, variant: 'gemv', splitK: 2 },
  { M: 1, K: 77, N: 33, layout: 'kn', dtype: 'f32', bias: true, variant: 'gemm' },
  { M: 2, K: 33, N: 77, layout: 'nk', dtype: 'f16', gelu: true, variant: 'gemm' },
  // prefill GEMM (M > 8): tiles cut by every edge
  { M: 37, K: 33, N: 77, layout: 'kn', dtype: 'f32', bias: true, gelu: true },
  { M: 37, K: 77, N: 33, layout: 'kn', dtype: 'f16', acc: true },
  { M: 37, K: 77, N: 33, layout: 'nk', dtype: 'f32', bias: true },
  { M: 130, K: 257, N: 129, layout: 'nk', dtype: 'f16', bias: true, acc: true },
  { M: 130, K: 257, N: 129, layout: 'kn', dtype: 'f32', gelu: true },
  { M: 130, K: 768, N: 768, layout: 'kn', dtype: 'f16', bias: true },
] as Case[]) {
  test(name(c), () =>
    withDevice(async ({ ctx, owned }) => {
      const rng = new Rng(c.M * 7919 + c.K * 31 + c.N + (c.dtype === 'f16' ? 1 : 0));
      const x = rng.normals(c.M * c.K);
      const W = makeWeight(rng, c);
      const bias = c.bias ? rng.normals(c.N, 0.5) : undefined;
      const base = c.acc ? rng.normals(c.M * c.N) : undefined;
      const ref = matmul64(x, W.seen, c.M, c.K, c.N, { layout: c.layout, bias, gelu: c.gelu, base });
      const xt = upload(owned, x, [c.M, c.K]);
      const wt = upload(owned, W.data, [W.rows, W.cols], c.dtype);
      const bt = bias && upload(owned, bias, [c.N]);
      for (const k of await kernelsFor(ctx, c.layout)) {
        // Past GEMV_MAX_M rows the GPU profile takes the GEMM; run its GEMV there too. Kernels without a GEMM skip 'gemm'.
        const hasGemm = k.profile.gemvMaxM !== null;
        if (c.variant === 'gemm' && !hasGemm) continue;
        const variants = c.variant
          ? [c.variant]
          : c.M > GEMV_MAX_M && hasGemm
            ? (['gemm', 'gemv'] as const)
            : [undefined];
        for (const variant of variants) {
          const { out, ds } = bindCase(owned, k, c, { x: xt, w: wt, bias: bt, base }, variant);
          // the variant and the split are the ones asked for
          if ((variant ?? k.variantFor(c.M)) === 'gemm') assert.is(ds.length, 1);
          else if (c.splitK !== undefined) assert.is(ds.length, c.splitK > 1 ? 2 : 1);
          const aligned = c.K % (c.dtype === 'f16' ? 8 : 4) === 0;
          if (c.layout === 'nk' && (variant ?? k.variantFor(c.M)) === 'gemv' && aligned) {
            const [gx, gz] = nkGroups(c.M, c.N);
            assert.equal([ds[0]!.workgroups[0], ds[0]!.workgroups[2]], [gx, gz], 'variant');
          }
          const alignedN = c.N % (c.dtype === 'f16' ? 8 : 4) === 0;
          if (c.layout === 'kn' && (variant ?? k.variantFor(c.M)) === 'gemv' && alignedN) {
            const [gx, gz] = knGroups(k, c.M, c.N, c.dtype, c.K, c.splitK);
            assert.equal([ds[0]!.workgroups[0], ds[0]!.workgroups[2]], [gx, gz], 'variant');
          }
          await run(ctx, ds);
          allClose(await download(ctx, out), ref, TOL, `${name(c)} (${variant ?? 'auto'}, ${what(k)})`);
        }
      }
    }),
  );
}

// The tiled GEMM in other shapes than the default 16 x 16 threads of 4 x 4 (MatmulProfile.gemmTile,
// a profile's field): 128 x 128 tiles of 8 x 8 blocks, 32 x 8 threads of 2 x 4, and odd 3 x 5
// blocks on 8 x 8 threads, each over shapes that cut every tile edge.
test('GEMM tile shapes: 8 x 8 blocks (bk 8), 32 x 8 threads of 2 x 4, odd 3 x 5 blocks match float64', () =>
  withDevice(async ({ ctx, owned }) => {
    const tiles = [
      { tx: 16, ty: 16, tm: 8, tn: 8, bk: 8 },
      { tx: 32, ty: 8, tm: 2, tn: 4, bk: 16 },
      { tx: 8, ty: 8, tm: 3, tn: 5, bk: 4 },
    ];
    const cases = [
      { M: 130, K: 257, N: 129, layout: 'kn', dtype: 'f32', bias: true, gelu: true },
      { M: 37, K: 77, N: 33, layout: 'nk', dtype: 'f16', acc: true },
      { M: 9, K: 40, N: 300, layout: 'kn', dtype: 'f16', bias: true },
      { M: 200, K: 33, N: 70, layout: 'nk', dtype: 'f32', bias: true },
    ] as Case[];
    for (const tile of tiles) {
      const k = await kernel(ctx, { gemmTile: tile });
      assert.equal(k.profile.gemmTile, tile);
      for (const c of cases) {
        const rng = new Rng(c.M + c.K + c.N + tile.tm);
        const x = rng.normals(c.M * c.K);
        const W = makeWeight(rng, c);
        const bias = c.bias ? rng.normals(c.N, 0.5) : undefined;
        const base = c.acc ? rng.normals(c.M * c.N) : undefined;
        const out = base ? upload(owned, base, [c.M, c.N]) : poisoned(owned, [c.M, c.N]);
        const ds = k.bind(owned, {
          x: upload(owned, x, [c.M, c.K]),
          w: upload(owned, W.data, [W.rows, W.cols], c.dtype),
          layout: c.layout,
          bias: bias && upload(owned, bias, [c.N]),
          activation: c.gelu ? 'gelu' : 'none',
          accumulate: c.acc,
          out,
          variant: 'gemm',
        });
        assert.equal(ds[0]!.workgroups, [
          Math.ceil(c.N / (tile.tx * tile.tn)),
          Math.ceil(c.M / (tile.ty * tile.tm)),
          1,
        ]);
        await run(ctx, ds);
        const ref = matmul64(x, W.seen, c.M, c.K, c.N, { layout: c.layout, bias, gelu: c.gelu, base });
        allClose(await download(ctx, out), ref, TOL, `${name(c)} gemm tile ${JSON.stringify(tile)}`);
      }
    }
  }));

test('gemmTile: shapes outside the shader or the adapter limits are refused, naming the problem', () =>
  withDevice(async ({ ctx }) => {
    const bad = async (tile: object, re: RegExp) =>
      rejects(
        () => kernel(ctx, { gemmTile: tile as never }),
        (e) => e instanceof InvalidOptionError && re.test(e.message),
      );
    await bad({ tx: 16, ty: 16, tm: 9, tn: 4, bk: 16 }, /tm must be an integer in \[1, 8\]/);
    await bad({ tx: 16, ty: 16, tm: 4, tn: 4, bk: 7 }, /bk must be an even integer/);
    await bad({ tx: 3, ty: 16, tm: 4, tn: 3, bk: 16 }, /tx \* tn must be even/);
    await bad(
      { tx: 64, ty: 64, tm: 1, tn: 2, bk: 2 },
      new RegExp(`4096 threads passes the adapter's ${ctx.limits.maxComputeInvocationsPerWorkgroup} per workgroup`),
    );
    await bad(
      { tx: 16, ty: 16, tm: 8, tn: 8, bk: 128 },
      new RegExp(
        `tiles take 131072 bytes of workgroup storage, over the adapter's ${ctx.limits.maxComputeWorkgroupStorageSize}`,
      ),
    );
    await bad({ tx: 16, ty: 16, tm: 4, tn: 4 }, /bk must be/);
    await bad({ tx: 16, ty: 300, tm: 4, tn: 4, bk: 16 }, /ty must be an integer in \[1, 256\]/);
  }));

test('packPanels: column panels of a row-major matrix, the last zero-padded', () => {
  // [2, 5] in panels of 2 columns: 3 panels of [2, 2]
  const m = Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(Array.from(packPanels(m, 2, 5, 2)), [1, 2, 6, 7, 3, 4, 8, 9, 5, 0, 10, 0]);
  assert.equal(Array.from(packPanels(m, 2, 5, 6)), [1, 2, 3, 4, 5, 0, 6, 7, 8, 9, 10, 0]);
  // a Float32Array is copied a row piece at a time, any other array value by value: same layout
  assert.equal(Array.from(packPanels(Array.from(m), 2, 5, 2)), [1, 2, 6, 7, 3, 4, 8, 9, 5, 0, 10, 0]);
  const big = Float32Array.from({ length: 7 * 300 }, (_, i) => i + 1);
  assert.equal(packPanels(big, 7, 300, 256), packPanels(Array.from(big), 7, 300, 256));
  assert.is(packPanels(big, 7, 300, 256)[(1 * 7 + 1) * 256 + 43], 600, 'panel 1, row 1, column 256 + 43 = element 599');
  assert.is(packPanels(big, 7, 300, 256)[(1 * 7 + 1) * 256 + 44], 0, 'the padded tail of the last panel');
  assert.throws(
    () => packPanels(m, 2, 5, 3),
    (e: Error) => e instanceof ShapeError && /even integer >= 2, got 3/.test(e.message),
  );
  assert.throws(
    () => packPanels(m, 3, 5, 2),
    (e: Error) => e instanceof ShapeError && /10 values for a \[3, 5\] matrix/.test(e.message),
  );
});

// Paneled 'kn' weights (the CPU-adapter layout): gemv_kn_cols at M = 1 and in blocks of rows, with
// N not a multiple of the panel (a part-filled last panel), split K, every epilogue, and panels of
// 96 columns (no power of two).
for (const c of [
  { M: 1, K: 96, N: 200, dtype: 'f32', panel: 64, bias: true, gelu: true },
  { M: 1, K: 67, N: 264, dtype: 'f16', panel: 64, acc: true },
  { M: 1, K: 768, N: 3072, dtype: 'f16', panel: 256, bias: true, gelu: true },
  { M: 1, K: 130, N: 520, dtype: 'f32', panel: 256, bias: true, acc: true, splitK: 3 },
  { M: 3, K: 67, N: 200, dtype: 'f32', panel: 64, bias: true, acc: true },
  { M: 5, K: 130, N: 264, dtype: 'f16', panel: 128, bias: true, gelu: true, splitK: 2 },
  { M: 37, K: 33, N: 72, dtype: 'f32', panel: 32, bias: true },
  { M: 2, K: 40, N: 120, dtype: 'f16', panel: 96 },
  { M: 21, K: 96, N: 200, dtype: 'f32', panel: 64, bias: true, gelu: true }, // gemm_kn_sg where available
  { M: 16, K: 132, N: 264, dtype: 'f16', panel: 128, acc: true },
  { M: 1, K: 40, N: 100, dtype: 'f32', panel: 96, acc: true },
] as Array<{
  M: number;
  K: number;
  N: number;
  dtype: 'f32' | 'f16';
  panel: number;
  bias?: boolean;
  gelu?: boolean;
  acc?: boolean;
  splitK?: number;
}>) {
  const title = `paneled kn ${c.dtype} M ${c.M} K ${c.K} N ${c.N} panel ${c.panel}${c.splitK ? ` splitK ${c.splitK}` : ''}`;
  test(title, () =>
    withDevice(async ({ ctx, owned }) => {
      const rng = new Rng(c.M * 131 + c.K * 7 + c.N);
      const x = rng.normals(c.M * c.K);
      const W = makeWeight(rng, { K: c.K, N: c.N, layout: 'kn', dtype: 'f32' });
      const seen = c.dtype === 'f16' ? unpackF16(packF16(W.seen, c.K, c.N), c.K, c.N) : W.seen;
      const laid = packPanels(seen, c.K, c.N, c.panel);
      const np = Math.ceil(c.N / c.panel);
      const data = c.dtype === 'f16' ? packF16(laid, np * c.K, c.panel) : laid;
      const wt = { ...upload(owned, data, [np * c.K, c.panel], c.dtype), shape: [c.K, c.N], panel: c.panel };
      const bias = c.bias ? rng.normals(c.N, 0.5) : undefined;
      const base = c.acc ? rng.normals(c.M * c.N) : undefined;
      const ref = matmul64(x, seen, c.M, c.K, c.N, { layout: 'kn', bias, gelu: c.gelu, base });
      // gemv_kn_cols, and from 8 rows on gemm_kn_sg at every lane count the device runs.
      const lanes = c.M >= 8 ? subgroupLanes(ctx) : [];
      for (const l of [0, ...lanes] as const) {
        const k = await kernel(ctx, { panel: c.panel, subgroupLanes: l }, COLS);
        const out = base ? upload(owned, base, [c.M, c.N]) : poisoned(owned, [c.M, c.N]);
        const ds = k.bind(owned, {
          x: upload(owned, x, [c.M, c.K]),
          w: wt,
          layout: 'kn',
          bias: bias && upload(owned, bias, [c.N]),
          activation: c.gelu ? 'gelu' : 'none',
          accumulate: c.acc,
          out,
          splitK: c.splitK,
        });
        assert.equal(
          [ds[0]!.workgroups[0], ds[0]!.workgroups[2]],
          knGroups(k, c.M, c.N, c.dtype, c.K, c.splitK),
          'kernel',
        );
        await run(ctx, ds);
        allClose(await download(ctx, out), ref, TOL, `${title} (${what(k)})`);
      }
    }),
  );
}

test('paneled weights: only profiles whose GEMV reads them at every M take them, and every path that cannot read panels refuses them', () =>
  withDevice(async ({ ctx, owned }) => {
    assert.equal([PROFILES.cpu.matmul.panel, PROFILES.gpu.matmul.panel], [256, 0]);
    // Where some M takes the GEMM (gemvMaxM), or the GEMV is 'threads', weights stay plain: neither reads panels.
    for (const [over, re] of [
      [
        { ...COLS, panel: 256, gemvMaxM: 4 },
        /panel 256 stores weights that only gemv_kn_cols reads, but here gemv 'cols' and gemvMaxM 4/,
      ],
      [{ ...GPU, panel: 256 }, /panel 256 stores weights that only gemv_kn_cols reads, but here gemv 'threads'/],
      [{ ...COLS, panel: 100 }, /matmul\.panel must be 0 or a positive multiple of 32, got 100/],
    ] as const) {
      await rejects(
        () => MatmulKernel.create(ctx, over),
        (e) => e instanceof InvalidOptionError && re.test(e.message),
      );
    }
    const x = poisoned(owned, [1, 64]);
    const out = poisoned(owned, [1, 128]);
    const w = { ...poisoned(owned, [64, 128]), shape: [64, 128], panel: 64 };
    const cols = await kernel(ctx, { panel: 64 }, COLS);
    assert.throws(
      () => cols.bind(owned, { x, w, layout: 'kn', out, variant: 'gemm' }),
      (e: Error) => e instanceof ShapeError && /panels of 64 columns.*GEMM needs it plain/.test(e.message),
    );
    const plain = await kernel(ctx);
    assert.throws(
      () => plain.bind(owned, { x, w, layout: 'kn', out }),
      (e: Error) => e instanceof ShapeError && /only the 'kn' gemv_kn_cols GEMV reads/.test(e.message),
    );
    const w48 = { ...w, shape: [64, 96], panel: 48 };
    assert.throws(
      () => cols.bind(owned, { x, w: w48, layout: 'kn', out: poisoned(owned, [1, 96]) }),
      (e: Error) =>
        e instanceof ShapeError &&
        /panels of 48 columns are not a multiple of a gemv_kn_cols thread's 32 columns/.test(e.message),
    );
    const short = { ...w, buffer: poisoned(owned, [64, 100]).buffer, shape: [64, 100] };
    assert.throws(
      () => cols.bind(owned, { x, w: short, layout: 'kn', out: poisoned(owned, [1, 100]) }),
      (e: Error) => e instanceof ShapeError && /needs 32768 bytes/.test(e.message),
    );
  }));

test('split-K is chosen for a narrow decode GEMV and not for a wide one (splitK workgroup: never); variant choice by M', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await kernel(ctx, { splitK: 'split' }); // gemv_kn_cols never splits by itself
    const x = poisoned(owned, [1, 768]);
    const narrow = k.bind(owned, { x, w: poisoned(owned, [768, 768]), layout: 'kn', out: poisoned(owned, [1, 768]) });
    assert.is(narrow.length, 2);
    assert.ok(narrow[0]!.workgroups[1] > 1, `K slices ${narrow[0]!.workgroups[1]}`);
    // gemv_kn_red splits K inside its workgroups: one dispatch, one K slice; an asked-for split still reduces
    const kr = await kernel(ctx);
    assert.is(deviceProfile(ctx).matmul.splitK, ctx.isCpuAdapter ? 'split' : 'workgroup', 'the profile');
    const one = kr.bind(owned, { x, w: poisoned(owned, [768, 768]), layout: 'kn', out: poisoned(owned, [1, 768]) });
    assert.equal([one.length, one[0]!.workgroups], [1, [768 / 16, 1, 1]]);
    assert.is(
      kr.bind(owned, { x, w: poisoned(owned, [768, 768]), layout: 'kn', out: poisoned(owned, [1, 768]), splitK: 3 })
        .length,
      2,
    );
    await rejects(
      () => kernel(ctx, { splitK: 'atomic' as never }),
      (e) => e instanceof InvalidOptionError && /splitK must be 'workgroup' or 'split', got "atomic"/.test(e.message),
    );
    const k32 = kr; // gemv_nk: 2048 rows x 32 lanes: enough threads
    const wide = k32.bind(owned, { x, w: poisoned(owned, [2048, 768]), layout: 'nk', out: poisoned(owned, [1, 2048]) });
    assert.is(wide.length, 1);
    // variant choice: GEMV for decode, GEMM past gemvMaxM (GPU profile); the CPU profiles keep the GEMV at every M.
    assert.is(k.variantFor(1), 'gemv');
    assert.is(k.variantFor(GEMV_MAX_M), 'gemv');
    assert.is(k.variantFor(GEMV_MAX_M + 1), 'gemm');
    assert.is((await kernel(ctx, {}, COLS)).variantFor(1024), 'gemv');
    const k4 = await kernel(ctx, { gemvMaxM: 4 });
    assert.is(k4.variantFor(4), 'gemv');
    assert.is(k4.variantFor(5), 'gemm');
  }));

test('gemm_kn_sg: named by the profile where subgroups are 4 or 8 lanes, taken from 8 rows with K % 4 == 0 and no split; refusals name the reason', () =>
  withDevice(async ({ ctx, owned }) => {
    const size = ctx.features.subgroupSize;
    const here = ctx.isCpuAdapter && (size === 8 || size === 4);
    assert.is(
      deviceProfile(ctx).matmul.subgroupLanes,
      here ? size : 0,
      `the profile on this adapter (subgroup size ${size})`,
    );
    for (const lanes of subgroupLanes(ctx)) {
      const k = await kernel(ctx, { subgroupLanes: lanes }, COLS);
      const entry = (M: number, K: number, extra: { splitK?: number } = {}) =>
        k.bind(owned, {
          x: poisoned(owned, [M, K]),
          w: poisoned(owned, [K, 64]),
          layout: 'kn',
          out: poisoned(owned, [M, 64]),
          ...extra,
        })[0]!.pipeline.label;
      assert.is(entry(7, 64), 'matmul+matmul_gemv.gemv_kn_cols');
      assert.is(entry(8, 64), 'matmul+matmul_subgroups.gemm_kn_sg');
      assert.is(entry(1024, 64), 'matmul+matmul_subgroups.gemm_kn_sg');
      assert.is(entry(16, 66), 'matmul+matmul_gemv.gemv_kn_cols', 'K % 4 != 0: x rows are not 16-byte words');
      assert.is(entry(16, 64, { splitK: 2 }), 'matmul+matmul_gemv.gemv_kn_cols', 'an asked-for split');
    }
    await rejects(
      () => kernel(ctx, { subgroupLanes: 16 as never }, COLS),
      (e) => e instanceof InvalidOptionError && /subgroupLanes must be 0, 4 or 8, got 16/.test(e.message),
    );
    await rejects(
      () => kernel(ctx, { subgroupLanes: 8 }),
      (e) =>
        e instanceof InvalidOptionError && /subgroupLanes 8 needs gemv 'cols' .*here gemv 'threads'/.test(e.message),
    );
  }));

test('LM head: nk over vocab 50257 with K = 16, f32 and f16, GEMV and GEMM', () =>
  withDevice(async ({ ctx, owned }) => {
    const N = 50257;
    const K = 16;
    for (const [dtype, M] of [
      ['f32', 2],
      ['f16', 1],
      ['f32', 9],
      ['f16', 9],
    ] as const) {
      const rng = new Rng(M * 3 + dtype.length);
      const x = rng.normals(M * K);
      const W = makeWeight(rng, { K, N, layout: 'nk', dtype });
      const ref = matmul64(x, W.seen, M, K, N, { layout: 'nk' });
      for (const k of await kernelsFor(ctx, 'nk')) {
        const out = poisoned(owned, [M, N]);
        await run(
          ctx,
          k.bind(owned, { x: upload(owned, x, [M, K]), w: upload(owned, W.data, [N, K], dtype), layout: 'nk', out }),
        );
        allClose(await download(ctx, out), ref, TOL, `lm head ${dtype} M ${M} (${what(k)})`);
      }
    }
  }));

/** Splits W [N, K] into chunks of `rowsPerChunk` rows laid out in one buffer at aligned offsets. */
function chunked(
  owned: Owned,
  words: Float32Array | Uint32Array,
  N: number,
  K: number,
  rowsPerChunk: number,
  dtype: 'f32' | 'f16',
): ChunkedTensor {
  const wpr = dtype === 'f16' ? Math.ceil(K / 2) : K;
  const align = owned.ctx.limits.minStorageBufferOffsetAlignment;
  const n = Math.ceil(N / rowsPerChunk);
  const offs: number[] = [];
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    offs.push(bytes);
    const rows = Math.min(N, (i + 1) * rowsPerChunk) - i * rowsPerChunk;
    bytes = Math.ceil((bytes + rows * wpr * 4) / align) * align;
  }
  const all = new Uint32Array(bytes / 4);
  const src = new Uint32Array(words.buffer, words.byteOffset, words.length);
  const chunks: GpuTensor[] = [];
  for (let i = 0; i < n; i++) {
    const r0 = i * rowsPerChunk;
    const rows = Math.min(N, r0 + rowsPerChunk) - r0;
    all.set(src.subarray(r0 * wpr, (r0 + rows) * wpr), offs[i]! / 4);
    chunks.push({ buffer: null as unknown as GPUBuffer, offset: offs[i]!, shape: [rows, K], dtype });
  }
  const buffer = owned.adopt(owned.ctx.createBufferWithData('test.chunked', all, STORAGE));
  for (const c of chunks) c.buffer = buffer;
  return { shape: [N, K], dtype, rowsPerChunk, chunks };
}

test('chunked nk weight: 3 chunks in one buffer, f16 and f32, GEMV (split and not) and GEMM', () =>
  withDevice(async ({ ctx, owned }) => {
    const N = 1000;
    const K = 40;
    for (const [dtype, M, splitK, bias] of [
      ['f16', 3, undefined, true],
      ['f32', 2, 3, false],
      ['f16', 37, undefined, true],
      ['f32', 1, 1, true],
      ['f16', 1, undefined, false],
    ] as const) {
      const rng = new Rng(N + M + dtype.length);
      const x = rng.normals(M * K);
      const W = makeWeight(rng, { K, N, layout: 'nk', dtype });
      const b = bias ? rng.normals(N) : undefined;
      const ref = matmul64(x, W.seen, M, K, N, { layout: 'nk', bias: b, gelu: true });
      const w = chunked(owned, W.data, N, K, 384, dtype);
      for (const k of await kernelsFor(ctx, 'nk')) {
        const out = poisoned(owned, [M, N]);
        const ds = k.bind(owned, {
          x: upload(owned, x, [M, K]),
          w,
          layout: 'nk',
          out,
          bias: b && upload(owned, b, [N]),
          splitK,
          activation: 'gelu',
        });
        assert.ok(ds.length >= 3);
        await run(ctx, ds);
        allClose(await download(ctx, out), ref, TOL, `chunked ${dtype} M ${M} (${what(k)})`);
      }
    }
  }));

test('chunked LM head [50257, 768] f32 in 2 chunks (whole passes the 128 MiB binding limit), M = 2', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await kernel(ctx);
    const N = 50257;
    const K = 768;
    const M = 2;
    assert.ok(N * K * 4 > 128 * 2 ** 20);
    const rng = new Rng(50257);
    const x = rng.normals(M * K);
    const W = makeWeight(rng, { K, N, layout: 'nk', dtype: 'f32' });
    const out = poisoned(owned, [M, N]);
    const w = chunked(owned, W.data, N, K, Math.ceil(N / 2), 'f32');
    const ds = k.bind(owned, { x: upload(owned, x, [M, K]), w, layout: 'nk', out });
    assert.is(ds.length, 2);
    await run(ctx, ds);
    const got = await download(ctx, out);
    assert.is(
      got.findIndex((v) => !Number.isFinite(v)),
      -1,
      'every logit written',
    );
    // float64 over a spread of columns, both chunks and their boundary included
    const cols = [0, 1, 2, 3, 1000, 25127, 25128, 25129, 40000, 50255, 50256];
    for (let i = 0; i < 200; i++) cols.push(rng.int(N));
    const pick = new Float32Array(M * cols.length);
    for (let m = 0; m < M; m++) cols.forEach((c, i) => (pick[m * cols.length + i] = got[m * N + c]!));
    allClose(pick, matmul64(x, W.seen, M, K, N, { layout: 'nk', cols }), TOL, 'chunked lm head');
  }));

test('packPanelsTransposed: the panels of the transpose', () => {
  // [5, 2] -> transpose [2, 5] in panels of 2 columns (= 2 source rows), the last zero-padded
  const m = Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  const t = Float32Array.from([1, 3, 5, 7, 9, 2, 4, 6, 8, 10]);
  assert.equal(Array.from(packPanelsTransposed(m, 5, 2, 2)), Array.from(packPanels(t, 2, 5, 2)));
  assert.equal(Array.from(packPanelsTransposed(m, 5, 2, 2)), [1, 3, 2, 4, 5, 7, 6, 8, 9, 0, 10, 0]);
  // several column tiles and panels, the last of each partial: element (r, c) of the source lands
  // in panel r / panel at row c, column r % panel
  const [R, C, P] = [300, 70, 64];
  const big = Float32Array.from({ length: R * C }, (_, i) => i + 1);
  const want = new Float32Array(Math.ceil(R / P) * C * P);
  for (let r = 0; r < R; r++)
    for (let c = 0; c < C; c++) want[Math.floor(r / P) * C * P + c * P + (r % P)] = big[r * C + c]!;
  assert.equal(packPanelsTransposed(big, R, C, P), want);
  assert.throws(
    () => packPanelsTransposed(m, 5, 2, 5),
    (e: Error) => e instanceof ShapeError && /even integer >= 2, got 5/.test(e.message),
  );
  assert.throws(
    () => packPanelsTransposed(m, 4, 2, 2),
    (e: Error) => e instanceof ShapeError && /10 values for a \[4, 2\] matrix/.test(e.message),
  );
});

/**
 * W [N, K] (values `seen`, f32) as the CPU-adapter LM head stores wte: chunks of `rowsPerChunk`
 * rows, each its transpose [K, n] in column panels (packPanelsTransposed), f32 or packed f16.
 */
function transposedChunks(
  owned: Owned,
  seen: Float32Array,
  N: number,
  K: number,
  rowsPerChunk: number,
  panel: number,
  dtype: 'f32' | 'f16',
): ChunkedTensor {
  const chunks: GpuTensor[] = [];
  for (let r0 = 0; r0 < N; r0 += rowsPerChunk) {
    const n = Math.min(rowsPerChunk, N - r0);
    const laid = packPanelsTransposed(seen.subarray(r0 * K, (r0 + n) * K), n, K, panel);
    const np = Math.ceil(n / panel);
    const data = dtype === 'f16' ? packF16(laid, np * K, panel) : laid;
    chunks.push({ ...upload(owned, data, [np * K, panel], dtype), shape: [K, n], panel });
  }
  return { shape: [N, K], dtype, rowsPerChunk, chunks, transposed: true };
}

// The CPU-adapter LM head: wte chunks stored transposed in panels, read by gemv_kn_cols as [K, n]
// pieces. N = 1003 is no multiple of 4 or 8 (a last 16-byte word that is part padding) and the
// chunks (384 rows) part-fill their last panel; M 1 and blocks of rows; panels of 128 and 96.
test('transposed chunked nk weight (the CPU LM head): f32 and f16, M 1 / 3 / 37, matches float64', () =>
  withDevice(async ({ ctx, owned }) => {
    const N = 1003;
    const K = 40;
    const kernels = [await kernel(ctx, { panel: 128 }, COLS), await kernel(ctx, { panel: 96 }, COLS)];
    for (const [dtype, M, bias] of [
      ['f32', 1, true],
      ['f16', 1, false],
      ['f32', 3, false],
      ['f16', 37, true],
    ] as const) {
      const rng = new Rng(N + M * 5 + dtype.length);
      const x = rng.normals(M * K);
      const W = makeWeight(rng, { K, N, layout: 'nk', dtype: 'f32' });
      const seen = dtype === 'f16' ? unpackF16(packF16(W.seen, N, K), N, K) : W.seen;
      const b = bias ? rng.normals(N) : undefined;
      const ref = matmul64(x, seen, M, K, N, { layout: 'nk', bias: b, gelu: true });
      for (const k of kernels) {
        const w = transposedChunks(owned, seen, N, K, 384, k.profile.panel, dtype);
        const out = poisoned(owned, [M, N]);
        const ds = k.bind(owned, {
          x: upload(owned, x, [M, K]),
          w,
          layout: 'nk',
          out,
          bias: b && upload(owned, b, [N]),
          activation: 'gelu',
        });
        assert.is(ds.length, 3);
        assert.equal([ds[0]!.workgroups[0], ds[0]!.workgroups[2]], knGroups(k, M, 384, dtype, K), 'kernel');
        await run(ctx, ds);
        allClose(await download(ctx, out), ref, TOL, `transposed chunked ${dtype} M ${M} panel ${k.profile.panel}`);
      }
    }
  }));

test('transposed chunked LM head [50257, 768] f32 in 2 chunks of 256-column panels, M = 1', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await MatmulKernel.create(ctx, PROFILES.cpu.matmul);
    const N = 50257;
    const K = 768;
    const rng = new Rng(50258);
    const x = rng.normals(K);
    const W = makeWeight(rng, { K, N, layout: 'nk', dtype: 'f32' });
    const out = poisoned(owned, [1, N]);
    const w = transposedChunks(owned, W.seen, N, K, 25344, 256, 'f32');
    const ds = k.bind(owned, { x: upload(owned, x, [1, K]), w, layout: 'nk', out });
    assert.is(ds.length, 2);
    await run(ctx, ds);
    const got = await download(ctx, out);
    assert.is(
      got.findIndex((v) => !Number.isFinite(v)),
      -1,
      'every logit written',
    );
    const cols = [0, 1, 255, 256, 25343, 25344, 25345, 50175, 50176, 50255, 50256];
    for (let i = 0; i < 200; i++) cols.push(rng.int(N));
    allClose(
      cols.map((c) => got[c]!),
      matmul64(x, W.seen, 1, K, N, { layout: 'nk', cols }),
      TOL,
      'transposed lm head',
    );
  }));

test('transposed chunked weights: refused without panels, by the GEMM and by kernels without gemv_kn_cols', () =>
  withDevice(async ({ ctx, owned }) => {
    const x = poisoned(owned, [1, 16]);
    const out = poisoned(owned, [1, 100]);
    const seen = new Float32Array(100 * 16);
    const w = transposedChunks(owned, seen, 100, 16, 64, 32, 'f32');
    const cols = await kernel(ctx, { panel: 32 }, COLS);
    assert.throws(
      () => cols.bind(owned, { x, w, layout: 'nk', out, variant: 'gemm' }),
      (e: Error) => e instanceof ShapeError && /panels of 32 columns.*GEMM needs it plain/.test(e.message),
    );
    const plain = await kernel(ctx);
    assert.throws(
      () => plain.bind(owned, { x, w, layout: 'nk', out }),
      (e: Error) => e instanceof ShapeError && /only the 'kn' gemv_kn_cols GEMV reads/.test(e.message),
    );
    const bare = { ...w, chunks: w.chunks.map((c) => ({ ...c, panel: undefined })) };
    assert.throws(
      () => cols.bind(owned, { x, w: bare, layout: 'nk', out }),
      (e: Error) => e instanceof ShapeError && /transposed chunked W must be stored in panels/.test(e.message),
    );
    const mixed = { ...w, chunks: [w.chunks[0]!, { ...w.chunks[1]!, panel: 64 }] };
    assert.throws(
      () => cols.bind(owned, { x, w: mixed, layout: 'nk', out }),
      (e: Error) => e instanceof ShapeError && /chunk 1 has panel 64, chunk 0 32/.test(e.message),
    );
    const flat = { ...w, chunks: w.chunks.map((c) => ({ ...c, shape: [c.shape[1]!, 16] })) };
    assert.throws(
      () => cols.bind(owned, { x, w: flat, layout: 'nk', out }),
      (e: Error) => e instanceof ShapeError && /W chunk 0: expected shape \[16, 64\], got \[64, 16\]/.test(e.message),
    );
  }));

// The layer-norm prologue (MatmulArgs.ln): fused in gemv_kn_ln and gemv_kn_red (statistics shared
// through workgroup memory; K = 130 is no multiple of their threads; split K), a separate layernorm
// dispatch elsewhere (fuseLn false, the GEMM, gemv_kn_cols plain and paneled even when fuseLn is
// asked, the 'nk' GEMV). x rows sit far from zero (mean ~ 40, std ~ 1) so a one-pass variance
// would lose digits.
test('ln prologue: LN(x) @ W matches float64 in every variant, fused in gemv_kn_ln', () =>
  withDevice(async ({ ctx, owned }) => {
    const K = 130;
    const N = 200;
    const eps = 0.05; // large enough that a wrong use of it shows
    assert.is(deviceProfile(ctx).matmul.fuseLn, !ctx.isCpuAdapter, 'fused on GPUs only');
    const kn = await kernel(ctx, { gemvMaxM: 4, splitK: 'split' });
    const cols = await kernel(ctx, { fuseLn: true }, COLS);
    const paneled = await kernel(ctx, { panel: 64 }, COLS);
    const unfused = await kernel(ctx, { fuseLn: false, splitK: 'split' });
    const red = await kernel(ctx, { gemvMaxM: 4 });
    const redUnfused = await kernel(ctx, { fuseLn: false });
    const runs: Array<[string, MatmulKernel, number, { splitK?: number; panel?: boolean }, boolean]> = [
      ['gemv_kn', kn, 1, {}, true],
      ['gemv_kn split K', kn, 3, { splitK: 3 }, true],
      ['gemv_kn M 4', kn, 4, {}, true],
      ['gemm', kn, 6, {}, false],
      ['gemv_kn_cols', cols, 1, {}, false],
      ['gemv_kn_cols block', cols, 6, {}, false],
      ['paneled', paneled, 2, { panel: true }, false],
      ['fuseLn false', unfused, 2, {}, false],
      ['gemv_kn_red', red, 1, {}, true],
      ['gemv_kn_red M 4', red, 4, {}, true],
      ['gemv_kn_red split K', red, 2, { splitK: 3 }, true],
      ['gemv_kn_red fuseLn false', redUnfused, 3, {}, false],
    ];
    for (const dtype of ['f32', 'f16'] as const) {
      for (const [what, k, M, o, fused] of runs) {
        const rng = new Rng(M * 17 + K + dtype.length + what.length);
        const x = rng.normals(M * K).map((v, i) => v + 40 + (i % K === 0 ? 3 : 0));
        const gamma = rng.normals(K, 0.5).map((v) => v + 1);
        const beta = rng.normals(K, 0.2);
        const W = makeWeight(rng, { K, N, layout: 'kn', dtype });
        const bias = rng.normals(N, 0.5);
        const ref = matmul64(layerNorm64(x, gamma, beta, M, K, eps), W.seen, M, K, N, {
          layout: 'kn',
          bias,
          gelu: true,
        });
        const w = o.panel
          ? {
              ...upload(
                owned,
                dtype === 'f16' ? packF16(packPanels(W.seen, K, N, 64), 4 * K, 64) : packPanels(W.seen, K, N, 64),
                [4 * K, 64],
                dtype,
              ),
              shape: [K, N],
              panel: 64,
            }
          : upload(owned, W.data, [K, N], dtype);
        const out = poisoned(owned, [M, N]);
        const ln = { gamma: upload(owned, gamma, [K]), beta: upload(owned, beta, [K]), eps };
        const ds = k.bind(
          owned,
          {
            x: upload(owned, x, [M, K]),
            ln,
            w,
            layout: 'kn',
            bias: upload(owned, bias, [N]),
            activation: 'gelu',
            out,
            splitK: o.splitK,
          },
          'fc',
        );
        assert.is(
          ds.some((d) => d.family === 'layernorm'),
          !fused,
          `${what}: layernorm dispatch ${fused ? 'fused away' : 'kept'}`,
        );
        await run(ctx, ds);
        allClose(
          await download(ctx, out),
          ref,
          { rel: 1e-4, atol: 2e-4, rtol: 1e-3 },
          `ln prologue ${what} ${dtype} M ${M}`,
        );
      }
    }
  }));

test('ln prologue on the LM head: a layernorm dispatch into the scratch, then the transposed gemv_kn_cols or gemv_nk', () =>
  withDevice(async ({ ctx, owned }) => {
    const N = 300;
    const K = 48;
    const M = 2;
    const rng = new Rng(300);
    const x = rng.normals(M * K).map((v) => 3 * v - 7);
    const gamma = rng.normals(K, 0.3).map((v) => v + 1);
    const beta = rng.normals(K, 0.3);
    const W = makeWeight(rng, { K, N, layout: 'nk', dtype: 'f32' });
    const ref = matmul64(layerNorm64(x, gamma, beta, M, K, 1e-5), W.seen, M, K, N, { layout: 'nk' });
    const ln = { gamma: upload(owned, gamma, [K]), beta: upload(owned, beta, [K]), eps: 1e-5 };
    const cols = await kernel(ctx, { panel: 32, fuseLn: true }, COLS);
    const rows = await kernel(ctx);
    for (const [k, w] of [
      [cols, transposedChunks(owned, W.seen, N, K, 128, 32, 'f32')],
      [rows, chunked(owned, W.data, N, K, 128, 'f32')],
      [rows, upload(owned, W.data, [N, K])],
    ] as Array<[MatmulKernel, ChunkedTensor | GpuTensor]>) {
      const out = poisoned(owned, [M, N]);
      const scratch = poisoned(owned, [M, K]);
      const ds = k.bind(
        owned,
        { x: upload(owned, x, [M, K]), ln: { ...ln, scratch }, w, layout: 'nk', out },
        'lm_head',
      );
      assert.equal(
        ds.map((d) => d.family),
        ['layernorm', ...ds.slice(1).map(() => 'matmul')],
      );
      await run(ctx, ds);
      allClose(await download(ctx, out), ref, TOL, 'lm head with ln_f');
      allClose(await download(ctx, scratch), layerNorm64(x, gamma, beta, M, K, 1e-5), TOL, 'the scratch holds LN(x)');
    }
  }));

test('ln prologue: bad gamma / beta / eps / scratch are refused with the problem named', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await kernel(ctx);
    const x = poisoned(owned, [1, 64]);
    const base = { x, w: poisoned(owned, [64, 32]), layout: 'kn' as const, out: poisoned(owned, [1, 32]) };
    const g = poisoned(owned, [64]);
    assert.throws(
      () => k.bind(owned, { ...base, ln: { gamma: poisoned(owned, [63]), beta: g, eps: 1e-5 } }),
      (e: Error) => e instanceof ShapeError && /ln gamma: expected shape \[64\], got \[63\]/.test(e.message),
    );
    assert.throws(
      () => k.bind(owned, { ...base, ln: { gamma: g, beta: poisoned(owned, [64], 'u32'), eps: 1e-5 } }),
      (e: Error) => e instanceof ShapeError && /ln beta: expected dtype f32, got u32/.test(e.message),
    );
    for (const eps of [0, -1, NaN, Infinity]) {
      assert.throws(
        () => k.bind(owned, { ...base, ln: { gamma: g, beta: g, eps } }),
        (e: Error) =>
          e instanceof ShapeError && new RegExp(`ln eps must be a finite number > 0, got ${eps}`).test(e.message),
      );
    }
    const unfused = await kernel(ctx, { fuseLn: false });
    assert.throws(
      () => unfused.bind(owned, { ...base, ln: { gamma: g, beta: g, eps: 1e-5, scratch: { ...x } } }),
      (e: Error) => e instanceof ShapeError && /ln scratch shares buffer .* with x/.test(e.message),
    );
    assert.throws(
      () => k.bind(owned, { ...base, out: poisoned(owned, [1, 32]), ln: { gamma: base.out, beta: g, eps: 1e-5 } }),
      (e: Error) => e instanceof ShapeError && /ln gamma: expected shape \[64\], got \[1, 32\]/.test(e.message),
    );
  }));

test('tensors at aligned offsets inside shared buffers (as the engine packs activations)', () =>
  withDevice(async ({ ctx, owned }) => {
    const M = 3;
    const K = 40;
    const N = 24;
    const rng = new Rng(404);
    const x = rng.normals(M * K);
    const b = rng.normals(N);
    const base = rng.normals(M * N);
    for (const layout of ['kn', 'nk'] as const) {
      const W = makeWeight(rng, { K, N, layout, dtype: 'f16' });
      const ref = matmul64(x, W.seen, M, K, N, { layout, bias: b, base });
      for (const k of await kernelsFor(ctx, layout)) {
        for (const variant of k.profile.gemvMaxM === null ? (['gemv'] as const) : (['gemv', 'gemm'] as const)) {
          // x at byte 256 and bias at 1024 of one buffer, out (holding the residual) at byte 768 of
          // another (a buffer written by a dispatch cannot also be read by it), W at byte 512 of a third
          const act = new Float32Array(1024).fill(NaN);
          act.set(x, 64);
          act.set(b, 256);
          const ab = upload(owned, act, [1024]).buffer;
          const ob = new Float32Array(1024).fill(NaN);
          ob.set(base, 192);
          const wAll = new Uint32Array(128 + W.data.length);
          wAll.set(W.data as Uint32Array, 128);
          const wb = upload(owned, wAll, [wAll.length], 'u32').buffer;
          const out: GpuTensor = { buffer: upload(owned, ob, [1024]).buffer, offset: 768, shape: [M, N], dtype: 'f32' };
          await run(
            ctx,
            k.bind(owned, {
              x: { buffer: ab, offset: 256, shape: [M, K], dtype: 'f32' },
              w: { buffer: wb, offset: 512, shape: [W.rows, W.cols], dtype: 'f16' },
              layout,
              bias: { buffer: ab, offset: 1024, shape: [N], dtype: 'f32' },
              accumulate: true,
              out,
              variant,
            }),
          );
          allClose(await download(ctx, out), ref, TOL, `offsets ${layout} ${variant} (${what(k)})`);
        }
      }
    }
  }));

test('bind rejects bad shapes, chunked kn weights, over-limit weights and out aliasing an input', () =>
  withDevice(async ({ ctx, owned }) => {
    const k = await kernel(ctx);
    const x = poisoned(owned, [2, 8]);
    const isShape = (re: RegExp) => (e: Error) => e instanceof ShapeError && re.test(e.message);
    assert.throws(
      () => k.bind(owned, { x, w: poisoned(owned, [9, 4]), layout: 'kn', out: poisoned(owned, [2, 4]) }),
      isShape(/W is \[9, 4\].*x has K = 8/),
    );
    assert.throws(
      () => k.bind(owned, { x, w: poisoned(owned, [8, 4]), layout: 'kn', out: poisoned(owned, [2, 5]) }),
      isShape(/out: expected shape \[2, 4\], got \[2, 5\]/),
    );
    assert.throws(
      () =>
        k.bind(owned, {
          x,
          w: poisoned(owned, [8, 4]),
          layout: 'kn',
          bias: poisoned(owned, [5]),
          out: poisoned(owned, [2, 4]),
        }),
      isShape(/bias: expected shape \[4\], got \[5\]/),
    );
    const chunk = poisoned(owned, [4, 8]);
    const ch: ChunkedTensor = { shape: [8, 8], dtype: 'f32', rowsPerChunk: 4, chunks: [chunk, chunk] };
    assert.throws(
      () => k.bind(owned, { x, w: ch, layout: 'kn', out: poisoned(owned, [2, 8]) }),
      isShape(/ChunkedTensor weight needs layout 'nk'/),
    );
    assert.throws(
      () => k.bind(owned, { x, w: { ...ch, chunks: [chunk] }, layout: 'nk', out: poisoned(owned, [2, 8]) }),
      isShape(/needs 2 chunks, got 1/),
    );
    const huge: GpuTensor = { buffer: chunk.buffer, offset: 0, shape: [50257, 768], dtype: 'f32' };
    assert.throws(
      () => k.bind(owned, { x: poisoned(owned, [1, 768]), w: huge, layout: 'nk', out: poisoned(owned, [1, 50257]) }),
      isShape(/maxStorageBufferBindingSize/),
    );
    // out in the buffer of x: over the same bytes, and at disjoint bytes (WebGPU refuses both)
    const both = upload(owned, new Float32Array(128), [128]);
    const xs: GpuTensor = { ...both, shape: [2, 8] };
    for (const offset of [0, 256]) {
      const outs: GpuTensor = { ...both, offset, shape: [2, 8] };
      assert.throws(
        () => k.bind(owned, { x: xs, w: poisoned(owned, [8, 8]), layout: 'kn', out: outs }),
        isShape(/out and x share buffer/),
      );
    }
    const wOut = poisoned(owned, [16, 8]);
    assert.throws(
      () =>
        k.bind(owned, { x, w: { ...wOut, shape: [8, 2] }, layout: 'kn', out: { ...wOut, offset: 256, shape: [2, 2] } }),
      isShape(/out and W share buffer/),
    );
    assert.throws(
      () => k.bind(owned, { x, w: poisoned(owned, [8, 4]), layout: 'kn', out: poisoned(owned, [2, 4]), splitK: 0 }),
      isShape(/splitK must be an integer >= 1, got 0/),
    );
  }));

test.run();
