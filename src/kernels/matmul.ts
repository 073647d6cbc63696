/**
 * Linear-layer kernel family (shaders/matmul.wgsl + matmul_gemv / matmul_gemm / matmul_subgroups):
 * out[M, N] = x[M, K] @ W (+ bias) (gelu) (+= out).
 *
 * Which kernels run is the device profile's choice (MatmulProfile, chosen in profile.ts); the
 * kernel builds the pipelines the profile names and no others, and routes each bind by its shape:
 *   - M <= gemvMaxM (every M where gemvMaxM is null): a GEMV that reads W once per block of rows
 *     of x. 'kn' weights (every per-layer linear) take the profile's `gemv`:
 *       'threads'  gemv_kn: a thread per 16-byte word of a W row. When N alone gives too few
 *                  threads to keep a GPU's memory system busy it splits K as `splitK` says:
 *                  'workgroup' (gemv_kn_red: across the threads of each workgroup, summed in
 *                  workgroup memory) or 'split' (across workgroups into partials, then `reduce`).
 *       'cols'     gemv_kn_cols: a thread per 32 columns (at M > 1 fewer, for a block of rows of
 *                  x), so each scalar x load feeds several W loads; never split. Rows that are
 *                  not 16-byte aligned take 'threads' (only 16-byte loads are vectorised). With
 *                  `subgroupLanes`, 'kn' matmuls of SG_FROM+ rows take gemm_kn_sg instead, the
 *                  lanes of a subgroup sharing their x loads by broadcast.
 *     'nk' weights (the tied LM head) take gemv_nk (32 lanes per W row). Profiles with panels
 *     store the LM head transposed in panels instead, read as 'kn' by gemv_kn_cols.
 *   - M > gemvMaxM: the GEMM tiled through workgroup memory (gemmTile).
 * W is f32, f16 (packed pairs, see f16.ts), q8 or q4 (packed integers with scales, see quant.ts),
 * layout 'kn' ([K, N], HF Conv1D) or 'nk' ([N, K], the tied LM head, which may be a ChunkedTensor
 * split by rows: one dispatch per chunk). One shader source serves every storage: the W_FMT
 * override picks how w_unit / w_elem decode W, and the kernel builds only the formats it is
 * created for.
 * With `ln`, x is layer-normalised first: out = LN(x) @ W ... . Where the profile fuses it
 * (`fuseLn`, 'threads' GEMV) gemv_kn applies it in its prologue, saving the layernorm dispatch and
 * the round trip of its output; elsewhere bind() returns the layernorm dispatch (into `ln.scratch`
 * or a buffer the owner holds) followed by the plain matmul.
 */
import type { GpuContext } from '../gpu/device.js';
import { InvalidOptionError, ShapeError } from '../errors.js';
import { binding, Dispatch, expectBindable, f32bits, GpuTensor, groups, Owned, UniformSlice } from '../gpu/common.js';
import { elementsPerWord } from '../gpu/common.js';
import { LayerNormKernel } from './layernorm.js';
import { alignedRows } from './matmul-pack.js';
import { readOperands, type MatmulArgs, type Operands, type WeightDType } from './matmul-args.js';

export type { MatmulArgs, WeightLayout, WeightDType } from './matmul-args.js';
export { WEIGHT_DTYPES } from './matmul-args.js';

/**
 * The tiled GEMM's shape: tx x ty threads per workgroup, each computing a tm x tn block of out, so a
 * workgroup covers (ty * tm) rows x (tx * tn) columns, staged through workgroup memory bk deep along K.
 */
export interface GemmTile {
  tx: number;
  ty: number;
  tm: number;
  tn: number;
  bk: number;
}

/** The device profile's matmul choices (see the header; profile.ts sets them per adapter). */
export interface MatmulProfile {
  /** The 'kn' GEMV: 'threads' (gemv_kn, GPUs) or 'cols' (gemv_kn_cols, CPU adapters). */
  gemv: 'threads' | 'cols';
  /** How the 'threads' GEMV splits K for narrow outputs: 'workgroup' (gemv_kn_red) or 'split' (+ `reduce`). */
  splitK: 'workgroup' | 'split';
  /** Whether the 'threads' GEMV applies MatmulArgs.ln in its prologue (else a layernorm dispatch first). */
  fuseLn: boolean;
  /** Largest M (rows of x) that takes the GEMV; larger M take the tiled GEMM. null: every M, no GEMM. */
  gemvMaxM: number | null;
  /** The tiled GEMM's shape (built only where gemvMaxM is not null). */
  gemmTile: GemmTile;
  /**
   * 'cols' only: lanes of gemm_kn_sg (4 or 8, at most the device's single subgroup size of 4 or
   * 8), which takes 'kn' matmuls of SG_FROM+ rows; 0: none (gemv_kn_cols at every M).
   */
  subgroupLanes: 0 | 4 | 8;
  /**
   * Columns per panel in which the engine stores 'kn' weights and the transposed LM head
   * (GpuTensor.panel, packPanels): 0 (plain row-major; the LM head 'nk') or a multiple of
   * PANEL_QUANTUM; panels need gemv 'cols' and gemvMaxM null (only gemv_kn_cols and gemm_kn_sg read them).
   */
  panel: number;
}

/** The GPU profile's largest GEMV M: W is read once per block of 8 rows; beyond, the GEMM reuses it more. */
export const GEMV_MAX_M = 8;
/** The default GEMM tile: 16 x 16 threads, each a 4 x 4 block -> 64 x 64 outputs; 16 deep (8 KiB of tiles). */
export const GEMM_TILE: GemmTile = { tx: 16, ty: 16, tm: 4, tn: 4, bk: 16 };
/** gemv_kn_cols reads whole threads' columns per panel: a panel width is a multiple of this (the widest thread, 32 columns). */
export const PANEL_QUANTUM = 32;

/** Rows of x one gemv_kn / gemv_nk workgroup handles (MAXM in the shader). */
const MAXM = 8;
/** gemv_kn threads per workgroup. */
const WG_KN = 64;
/** gemv_nk: threads per workgroup and lanes per W row (LPR in the shader): 8 W rows per workgroup. */
const WG_NK = 256;
const LPR = 32;
/** gemv_kn_red: threads per workgroup, and K groups among them (4 column threads, 64 bytes of each row). */
const WG_RED = 256;
const KG_RED = 64;
const WG_REDUCE = 256;
/**
 * gemv_kn_cols threads per workgroup (one 8-wide SIMD vector on lavapipe; small groups spread
 * narrow N over the cores) and its tiles: 16-byte W words per thread (KNV) at M = 1 (32 columns),
 * and for blocks of `rows` rows of x (KNM) at M > 1, with rows x words (f16: x 2) <= 16 vec4
 * accumulators.
 */
const WG_COLS = 8;
/** f32: units of 4 columns; f16: (also q8 and q4, whose units are 8 columns as well) of 8. */
type ColsTile = { rows: number; f32: number; f16: number };
const COLS_ONE: ColsTile = { rows: 1, f32: 8, f16: 4 };
const COLS_BLOCK: ColsTile = { rows: 4, f32: 4, f16: 2 };
/** gemm_kn_sg: the smallest M that takes it, and from which M its workgroups take 16 rows of x instead of 8 (SGR). */
export const SG_FROM = 8;
const SG16_FROM = 16;
/** Largest GEMM tm / tn (TMAX in the shader). */
const GEMM_TMAX = 8;
/**
 * Split-K aims for about this many GEMV threads in flight (a large GPU needs tens of thousands of
 * outstanding loads to reach its bandwidth), but keeps at least MIN_KSLICE rows of K per slice.
 */
const TARGET_THREADS = 16384;
const MIN_KSLICE = 64;

const F_BIAS = 1;
const F_GELU = 2;
const F_ACC = 4;
const F_PARTIAL = 8;
const F_LN = 16;

// GPUBufferUsage.STORAGE (a literal: in Node the GPU globals exist only once a device is requested).
const STORAGE = 0x80;

type Entry = 'gemv_kn' | 'gemv_kn_ln' | 'gemv_kn_red' | 'gemv_kn_cols' | 'gemm_kn_sg' | 'gemv_nk' | 'gemm' | 'reduce';
/**
 * Bindings each entry point uses (layout 'auto' holds only these). 9 (the scales) everywhere:
 * `finish` names it (q8); 3 and 4 wherever w_unit is called (its formats read either view).
 */
const USES: Record<Entry, number[]> = {
  gemv_kn: [0, 1, 3, 4, 5, 6, 7, 8, 9], // 7, 8: unread without F_LN, but its body (shared with gemv_kn_ln) names them
  gemv_kn_ln: [0, 1, 3, 4, 5, 6, 7, 8, 9],
  gemv_kn_red: [0, 1, 3, 4, 5, 6, 7, 8, 9],
  gemv_kn_cols: [0, 1, 3, 4, 5, 6, 9],
  gemm_kn_sg: [0, 2, 3, 4, 5, 6, 9],
  gemv_nk: [0, 1, 2, 3, 4, 5, 6, 9],
  gemm: [0, 1, 3, 5, 6, 9],
  reduce: [0, 1, 5, 6, 9],
};

/** W_FMT override values of the W storages. */
const FMT: Record<WeightDType, number> = { f32: 0, f16: 1, q8: 2, q4: 3 };
/** Columns per unit of W (w_unit): 4 for f32, 8 for the others. */
function unitCols(d: WeightDType): number {
  return d === 'f32' ? 4 : 8;
}
/** u32 words per unit: 4 (f32, f16: one 16-byte word), 2 (q8), 1 (q4). */
function unitWords(d: WeightDType): number {
  return (unitCols(d) / elementsPerWord(d)) | 0;
}
/** The shader module of each entry point ('matmul' + the file holding it). */
const MODULE: Record<Entry, string> = {
  gemv_kn: 'matmul+matmul_gemv',
  gemv_kn_ln: 'matmul+matmul_gemv',
  gemv_kn_red: 'matmul+matmul_gemv',
  gemv_kn_cols: 'matmul+matmul_gemv',
  gemv_nk: 'matmul+matmul_gemv',
  reduce: 'matmul+matmul_gemv',
  gemm_kn_sg: 'matmul+matmul_subgroups',
  gemm: 'matmul+matmul_gemm',
};

/** A pipeline to build: its key in MatmulKernel's map, entry point and override constants. */
type Spec = [key: string, entry: Entry, constants: Record<string, number>];

/** The pipelines a profile names, for each W storage in `dtypes`. */
function pipelineSpecs(p: MatmulProfile, dtypes: readonly WeightDType[]): Spec[] {
  const specs: Spec[] = [['reduce', 'reduce', { WG: WG_REDUCE }]]; // every GEMV may write partials (MatmulArgs.splitK)
  for (const dt of dtypes) {
    const W_FMT = FMT[dt];
    const wide = dt !== 'f32';
    // The 'threads' GEMV: the profile's own, or on 'cols' profiles for rows that are not unit aligned.
    for (const vec of p.gemv === 'threads' ? [0, 1] : [0]) {
      const c = { W_FMT, VEC: vec };
      if (p.splitK === 'workgroup')
        specs.push([`gemv_kn_red:${dt}:${vec}`, 'gemv_kn_red', { ...c, WG: WG_RED, KG: KG_RED }]);
      else specs.push([`gemv_kn:${dt}:${vec}`, 'gemv_kn', { ...c, WG: WG_KN }]);
      if (p.splitK === 'split' && p.fuseLn) specs.push([`gemv_kn_ln:${dt}:${vec}`, 'gemv_kn_ln', { ...c, WG: WG_KN }]);
    }
    if (p.panel === 0) {
      for (const vec of [0, 1]) specs.push([`gemv_nk:${dt}:${vec}`, 'gemv_nk', { W_FMT, VEC: vec, WG: WG_NK }]);
    }
    if (p.gemv === 'cols') {
      const tiles: Array<[string, ColsTile]> = [
        ['one', COLS_ONE],
        ['block', COLS_BLOCK],
      ];
      for (const [shape, t] of tiles) {
        const c = { W_FMT, VEC: 1, WG: WG_COLS, KNV: wide ? t.f16 : t.f32, KNM: t.rows };
        specs.push([`gemv_kn_cols:${dt}:${shape}`, 'gemv_kn_cols', c]);
      }
    }
    if (p.subgroupLanes) {
      for (const sgr of [8, 16])
        specs.push([`gemm_kn_sg:${dt}:${sgr}`, 'gemm_kn_sg', { W_FMT, SGR: sgr, SGL: p.subgroupLanes }]);
    }
    if (p.gemvMaxM !== null) {
      const g = p.gemmTile;
      for (const nk of p.panel === 0 ? [0, 1] : [0])
        specs.push([`gemm:${dt}:${nk}`, 'gemm', { W_FMT, NK: nk, TX: g.tx, TY: g.ty, TM: g.tm, TN: g.tn, BK: g.bk }]);
    }
  }
  return specs;
}

/** Checks a GemmTile against the shader's bounds and the adapter's workgroup limits; returns the problems. */
function gemmTileProblems(ctx: GpuContext, tile: GemmTile): string[] {
  const L = ctx.limits;
  const int = (v: unknown, lo: number, hi: number) => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
  const bytes = tile.bk * (tile.ty * tile.tm + tile.tx * tile.tn) * 4;
  return [
    !int(tile.tm, 1, GEMM_TMAX) && `tm must be an integer in [1, ${GEMM_TMAX}]`,
    !int(tile.tn, 1, GEMM_TMAX) && `tn must be an integer in [1, ${GEMM_TMAX}]`,
    !int(tile.tx, 1, L.maxComputeWorkgroupSizeX) && `tx must be an integer in [1, ${L.maxComputeWorkgroupSizeX}]`,
    !int(tile.ty, 1, 256) && 'ty must be an integer in [1, 256]',
    !int(tile.bk, 2, 1024) || tile.bk % 2 !== 0 ? 'bk must be an even integer in [2, 1024]' : false,
    (tile.tx * tile.tn) % 2 !== 0 && 'tx * tn must be even (f16 words hold column pairs)',
    tile.tx * tile.ty > L.maxComputeInvocationsPerWorkgroup &&
      `tx * ty = ${tile.tx * tile.ty} threads passes the adapter's ${L.maxComputeInvocationsPerWorkgroup} per workgroup`,
    bytes > L.maxComputeWorkgroupStorageSize &&
      `its tiles take ${bytes} bytes of workgroup storage, over the adapter's ${L.maxComputeWorkgroupStorageSize}`,
  ].filter((x): x is string => typeof x === 'string');
}

/**
 * Checks a MatmulProfile (every field present) against the kernel's bounds and the device; throws
 * InvalidOptionError naming the field (`where`: its path, e.g. 'profile.matmul').
 */
export function checkMatmulProfile(ctx: GpuContext, p: MatmulProfile, where = 'matmul'): void {
  const bad = (field: string, what: string, got: unknown) =>
    new InvalidOptionError(`${where}.${field} must be ${what}, got ${JSON.stringify(got)}`);
  if (p.gemv !== 'threads' && p.gemv !== 'cols') throw bad('gemv', "'threads' or 'cols'", p.gemv);
  if (p.splitK !== 'workgroup' && p.splitK !== 'split') throw bad('splitK', "'workgroup' or 'split'", p.splitK);
  if (typeof p.fuseLn !== 'boolean') throw bad('fuseLn', 'a boolean', p.fuseLn);
  if (p.gemvMaxM !== null && !(Number.isInteger(p.gemvMaxM) && p.gemvMaxM >= 0))
    throw bad('gemvMaxM', 'null (the GEMV at every M) or an integer >= 0', p.gemvMaxM);
  const tile = p.gemmTile as Partial<GemmTile> | undefined;
  const problems =
    typeof tile === 'object' && tile !== null
      ? gemmTileProblems(ctx, { tx: tile.tx!, ty: tile.ty!, tm: tile.tm!, tn: tile.tn!, bk: tile.bk! })
      : ['it must be an object { tx, ty, tm, tn, bk }'];
  if (problems.length)
    throw new InvalidOptionError(`${where}.gemmTile ${JSON.stringify(p.gemmTile)}: ${problems.join('; ')}`);
  if (p.subgroupLanes !== 0 && p.subgroupLanes !== 4 && p.subgroupLanes !== 8)
    throw bad('subgroupLanes', '0, 4 or 8', p.subgroupLanes);
  const size = ctx.features.subgroupSize;
  if (p.subgroupLanes && !(p.gemv === 'cols' && (size === 4 || size === 8) && p.subgroupLanes <= size)) {
    throw new InvalidOptionError(
      `${where}.subgroupLanes ${p.subgroupLanes} needs gemv 'cols' and the 'subgroups' feature with a single subgroup size of 4 or 8, at least the lanes; here gemv '${p.gemv}', subgroups ${ctx.features.subgroups}, subgroup size ${size ?? 'not a single size'}. Use 0`,
    );
  }
  if (!(Number.isInteger(p.panel) && p.panel >= 0 && p.panel % PANEL_QUANTUM === 0))
    throw bad('panel', `0 or a positive multiple of ${PANEL_QUANTUM}`, p.panel);
  if (p.panel > 0 && !(p.gemv === 'cols' && p.gemvMaxM === null)) {
    throw new InvalidOptionError(
      `${where}.panel ${p.panel} stores weights that only gemv_kn_cols reads, but here gemv '${p.gemv}' and gemvMaxM ${p.gemvMaxM} (the GEMM reads them plain); use panel 0, or gemv 'cols' with gemvMaxM null`,
    );
  }
}

/** The row stride of a quantized W's scales (its [G, sld] shape), 0 for f32 / f16. */
function sld(w: GpuTensor): number {
  return w.scales?.shape[1] ?? 0;
}

/** How a GEMV bind runs: its entry point, pipeline key, rows of x per z block and workgroups along x for n columns. */
interface GemvRoute {
  entry: Entry;
  key: string;
  rows: number;
  groupsX: (n: number) => number;
}

export class MatmulKernel {
  private constructor(
    private readonly ctx: GpuContext,
    /** The choices it was built for. */
    readonly profile: Readonly<MatmulProfile>,
    /** Built pipelines by key (see pipelineSpecs). */
    private readonly pipelines: Map<string, GPUComputePipeline>,
    private readonly layernorm: LayerNormKernel,
  ) {}

  /**
   * Builds the pipelines `profile` names (checked first; see checkMatmulProfile). `layernorm`
   * serves the `ln` arguments it does not fuse (a model shares its own); default: one of its own.
   */
  static async create(
    ctx: GpuContext,
    profile: MatmulProfile,
    layernorm?: LayerNormKernel,
    dtypes: readonly WeightDType[] = ['f32', 'f16'],
  ): Promise<MatmulKernel> {
    checkMatmulProfile(ctx, profile);
    const specs = pipelineSpecs(profile, [...new Set(dtypes)]);
    const [ln, ...built] = (await Promise.all([
      layernorm ?? LayerNormKernel.create(ctx),
      ...specs.map(([, entry, c]) => ctx.pipeline(MODULE[entry], entry, c)),
    ])) as [LayerNormKernel, ...GPUComputePipeline[]];
    const pipelines = new Map(specs.map(([key], i) => [key, built[i]!]));
    return new MatmulKernel(ctx, { ...profile, gemmTile: { ...profile.gemmTile } }, pipelines, ln);
  }

  /** The variant `bind` picks for M rows of x. */
  variantFor(M: number): 'gemv' | 'gemm' {
    const max = this.profile.gemvMaxM;
    return max === null || M <= max ? 'gemv' : 'gemm';
  }

  /** Whether a 'kn' matmul of M rows, K long, whose W gemv_kn_cols reads, takes gemm_kn_sg (no split of K asked for). */
  takesSubgroups(M: number, K: number, splitK?: number): boolean {
    return this.profile.subgroupLanes > 0 && M >= SG_FROM && K % 4 === 0 && (splitK ?? 1) === 1;
  }

  /** The kernel that runs the per-layer ('kn', 16-byte aligned) matmuls of M rows of x, K long: for reports. */
  kernelFor(M: number, K: number): 'gemm' | 'gemv' | 'cols' | 'subgroups' {
    if (this.variantFor(M) === 'gemm') return 'gemm';
    if (this.profile.gemv === 'threads') return 'gemv';
    return this.takesSubgroups(M, K) ? 'subgroups' : 'cols';
  }

  bind(owner: Owned, a: MatmulArgs, label = 'matmul'): Dispatch[] {
    const op = readOperands(this.ctx, a, label);
    if ((a.variant ?? this.variantFor(op.M)) === 'gemm') {
      if (a.ln) return this.lnFirst(owner, a, label);
      return this.bindGemm(owner, a, op, label);
    }
    const route = this.gemvRoute(a, op, label);
    const fused = route.entry === 'gemv_kn_ln' || route.entry === 'gemv_kn_red';
    if (a.ln && !(fused && this.profile.fuseLn)) return this.lnFirst(owner, a, label);
    return this.bindGemv(owner, a, op, route, label);
  }

  /** A built pipeline, or an InvalidOptionError saying which profile choice would build it. */
  private pipeline(key: string, label: string, why: string): GPUComputePipeline {
    const p = this.pipelines.get(key);
    if (!p) throw new InvalidOptionError(`${label}: this MatmulKernel's profile builds no ${key} pipeline: ${why}`);
    return p;
  }

  /** Flags of the epilogue (bias, gelu, accumulate). */
  private static flags(a: MatmulArgs, op: Operands): number {
    return (a.bias ? F_BIAS : 0) | (op.activation === 'gelu' ? F_GELU : 0) | (a.accumulate ? F_ACC : 0);
  }

  private bindGemm(owner: Owned, a: MatmulArgs, op: Operands, label: string): Dispatch[] {
    if (op.panel !== undefined) {
      throw new ShapeError(
        `${label}: W is stored in panels of ${op.panel} columns, which only the 'kn' gemv_kn_cols GEMV reads; the GEMM needs it plain (profile matmul.panel 0)`,
      );
    }
    const { M, K, N } = op;
    const dt = op.dtype;
    const nk = op.layout === 'nk' ? 1 : 0;
    const pipeline = this.pipeline(
      `gemm:${dt}:${nk}`,
      label,
      "the GEMM needs matmul.gemvMaxM set (and panel 0 for an 'nk' W)",
    );
    const tile = this.profile.gemmTile;
    const [BM, BN] = [tile.ty * tile.tm, tile.tx * tile.tn];
    const flags = MatmulKernel.flags(a, op);
    const wordsPerRow = (cols: number) => Math.ceil(cols / elementsPerWord(dt));
    let nOff = 0;
    return op.pieces.map((wp, i) => {
      const n = op.layout === 'kn' ? N : wp.shape[0]!;
      const params = owner.uniform(
        `${label}.params${i}`,
        [
          M,
          n,
          K,
          wordsPerRow(op.layout === 'kn' ? N : K),
          N,
          nOff,
          K,
          flags,
          0,
          0,
          sld(wp),
        ] /* Params: pw, eps unused */,
      );
      const wg: [number, number, number] = [
        groups(this.ctx, label, Math.ceil(n / BN)),
        groups(this.ctx, label, Math.ceil(M / BM)),
        1,
      ];
      nOff += n;
      const res = { 0: params, 1: a.x, 3: wp, 5: a.bias ?? a.x, 6: a.out, 9: wp.scales ?? a.x };
      const bindGroup = this.bindGroup(owner, 'gemm', pipeline, label, res);
      return {
        family: 'matmul',
        label: op.pieces.length > 1 ? `${label}[${i}]` : label,
        pipeline,
        bindGroup,
        workgroups: wg,
      };
    });
  }

  /** Which GEMV entry point (and tile) a bind takes; see the header. */
  private gemvRoute(a: MatmulArgs, op: Operands, label: string): GemvRoute {
    const { M, K, dtype, layout, panel } = op;
    const dt = dtype;
    const per = unitCols(dtype); // elements per unit (w_unit)
    const words = (n: number) => Math.ceil(n / per);
    // Unit loads need W rows of whole units (and 16-byte aligned x rows for 'nk'); a paneled W's
    // stored rows are its panels (zero-padded, so any N).
    const vec = panel !== undefined || alignedRows(layout === 'kn' ? op.N : K, dtype) ? 1 : 0;
    if (layout === 'nk') {
      if (panel !== undefined)
        throw new ShapeError(
          `${label}: an 'nk' W stored in panels of ${panel} columns: only 'kn' panels (gemv_kn_cols) are read`,
        );
      const key = `gemv_nk:${dt}:${vec}`;
      this.pipeline(key, label, "an 'nk' W needs matmul.panel 0 (panels store the LM head transposed, read as 'kn')");
      return { entry: 'gemv_nk', key, rows: MAXM, groupsX: (n) => Math.ceil(n / (WG_NK / LPR)) };
    }
    if (this.profile.gemv === 'cols' && vec) {
      if (this.takesSubgroups(M, K, a.splitK)) {
        const sgr = M >= SG16_FROM ? 16 : 8;
        const lanes = this.profile.subgroupLanes;
        return {
          entry: 'gemm_kn_sg',
          key: `gemm_kn_sg:${dt}:${sgr}`,
          rows: sgr,
          groupsX: (n) => Math.ceil(words(n) / lanes),
        };
      }
      const [shape, t]: [string, ColsTile] = M === 1 ? ['one', COLS_ONE] : ['block', COLS_BLOCK];
      const knv = dtype !== 'f32' ? t.f16 : t.f32;
      if (panel !== undefined && panel % (per * knv) !== 0)
        throw new ShapeError(
          `${label}: W panels of ${panel} columns are not a multiple of a gemv_kn_cols thread's ${per * knv} columns`,
        );
      const groupsX = (n: number) => Math.ceil(Math.ceil(words(n) / knv) / WG_COLS);
      return { entry: 'gemv_kn_cols', key: `gemv_kn_cols:${dt}:${shape}`, rows: t.rows, groupsX };
    }
    if (panel !== undefined) {
      throw new ShapeError(
        `${label}: W is stored in panels of ${panel} columns, which only the 'kn' gemv_kn_cols GEMV reads (profile matmul.gemv 'cols'); here gemv '${this.profile.gemv}'. Upload it plain (panel 0)`,
      );
    }
    if (this.profile.splitK === 'workgroup') {
      const groupsX = (n: number) => Math.ceil(words(n) / (WG_RED / KG_RED));
      return { entry: 'gemv_kn_red', key: `gemv_kn_red:${dt}:${vec}`, rows: MAXM, groupsX };
    }
    const entry = a.ln && this.profile.fuseLn ? 'gemv_kn_ln' : 'gemv_kn';
    return { entry, key: `${entry}:${dt}:${vec}`, rows: MAXM, groupsX: (n) => Math.ceil(words(n) / WG_KN) };
  }

  /** K slices of a GEMV: asked for, or (gemv_kn, gemv_nk) enough threads in flight; multiples of 8 so every slice starts on a 16-byte word. */
  private slices(a: MatmulArgs, op: Operands, entry: Entry): { S: number; kslice: number } {
    const { M, K, N } = op;
    let S = a.splitK ?? 1;
    if (a.splitK === undefined && (entry === 'gemv_kn' || entry === 'gemv_kn_ln' || entry === 'gemv_nk')) {
      // gemv_kn_red splits K inside its workgroups; gemv_kn_cols / gemm_kn_sg threads already outnumber the cores.
      const threads = entry === 'gemv_nk' ? N * LPR : Math.ceil(N / unitCols(op.dtype));
      S = threads >= TARGET_THREADS ? 1 : Math.min(Math.ceil(TARGET_THREADS / threads), Math.floor(K / MIN_KSLICE));
      // The partials [S, M, N] must fit one binding.
      S = Math.max(1, Math.min(S, Math.floor(this.ctx.limits.maxStorageBufferBindingSize / (M * N * 4))));
    }
    // q4: slices on its groups of 32 k (gemv_kn_cols scales whole groups).
    const q = op.dtype === 'q4' ? 32 : 8;
    const kslice = S <= 1 ? K : Math.ceil(Math.ceil(K / S) / q) * q;
    return { S: Math.ceil(K / kslice), kslice };
  }

  private bindGemv(owner: Owned, a: MatmulArgs, op: Operands, route: GemvRoute, label: string): Dispatch[] {
    const ctx = this.ctx;
    const { M, K, N, layout, panel } = op;
    const pipeline = this.pipeline(route.key, label, 'see MatmulProfile');
    const epw = elementsPerWord(op.dtype);
    const per = unitCols(op.dtype);
    const { S, kslice } = this.slices(a, op, route.entry);
    const partials = S > 1 ? this.partials(owner, S, M, N, label) : undefined;
    const flags = (partials ? F_PARTIAL : MatmulKernel.flags(a, op)) | (a.ln ? F_LN : 0);
    const zBlocks = groups(ctx, label, Math.ceil(M / route.rows));
    const pw = panel !== undefined ? panel / per : 0;
    const out: Dispatch[] = [];
    let nOff = 0;
    op.pieces.forEach((wp, i) => {
      // Columns of this piece: a 'kn' piece's second dimension (all of N unless chunked), an 'nk' one's first.
      const n = layout === 'kn' ? wp.shape[1]! : wp.shape[0]!;
      // u32 words per W row; a paneled row (gemv_kn_cols) counts whole units, the padded panel tail included.
      const wpr =
        layout === 'nk'
          ? Math.ceil(K / epw)
          : panel !== undefined
            ? Math.ceil(n / per) * unitWords(op.dtype)
            : Math.ceil(n / epw);
      const params = owner.uniform(`${label}.params${i}`, [
        M,
        n,
        K,
        wpr,
        N,
        nOff,
        kslice,
        flags,
        pw,
        f32bits(a.ln?.eps ?? 0),
        sld(wp),
      ]);
      const res = {
        0: params,
        1: a.x,
        2: a.x,
        3: wp,
        4: wp,
        5: a.bias ?? a.x,
        6: partials ?? a.out,
        7: a.ln?.gamma ?? a.x,
        8: a.ln?.beta ?? a.x,
        9: wp.scales ?? a.x,
      };
      out.push({
        family: 'matmul',
        label: op.pieces.length > 1 ? `${label}[${i}]` : label,
        pipeline,
        bindGroup: this.bindGroup(owner, route.entry, pipeline, label, res),
        workgroups: [groups(ctx, label, route.groupsX(n)), groups(ctx, label, S), zBlocks],
      });
      nOff += n;
    });
    if (partials) out.push(this.bindReduce(owner, a, op, partials, S, label));
    return out;
  }

  /** The split-K partials [S, M, N] f32 (bias etc. applied by `reduce`). */
  private partials(owner: Owned, S: number, M: number, N: number, label: string): GpuTensor {
    const t: GpuTensor = {
      buffer: owner.buffer(`${label}.partials`, S * M * N * 4, STORAGE),
      offset: 0,
      shape: [S, M, N],
      dtype: 'f32',
    };
    expectBindable(this.ctx, `${label} split-K partials (splitK ${S})`, t);
    return t;
  }

  /** `reduce`: out = epilogue(sum of the S partials), one element per thread. */
  private bindReduce(
    owner: Owned,
    a: MatmulArgs,
    op: Operands,
    partials: GpuTensor,
    S: number,
    label: string,
  ): Dispatch {
    const { M, K, N } = op;
    const rp = this.pipelines.get('reduce')!;
    const total = Math.ceil((M * N) / WG_REDUCE);
    const gx = Math.min(total, this.ctx.limits.maxComputeWorkgroupsPerDimension);
    const gy = groups(this.ctx, label, Math.ceil(total / gx));
    const params = owner.uniform(
      `${label}.reduce.params`,
      [M, N, S, gx, N, 0, K, MatmulKernel.flags(a, op), 0, 0, 0] /* Params: pw, eps, sld unused */,
    );
    const bindGroup = this.bindGroup(owner, 'reduce', rp, `${label}.reduce`, {
      0: params,
      1: partials,
      5: a.bias ?? a.x,
      6: a.out,
      9: a.x,
    });
    return { family: 'matmul', label: `${label}.reduce`, pipeline: rp, bindGroup, workgroups: [gx, gy, 1] };
  }

  /** `ln` as its own dispatch: LN(x) into the scratch [M, K], then the matmul reading it. */
  private lnFirst(owner: Owned, a: MatmulArgs, label: string): Dispatch[] {
    const [M, K] = a.x.shape as [number, number];
    const { gamma, beta, eps, scratch } = a.ln!;
    const y: GpuTensor = scratch ?? {
      buffer: owner.buffer(`${label}.ln_out[${M},${K}]`, M * K * 4, STORAGE),
      offset: 0,
      shape: [M, K],
      dtype: 'f32',
    };
    if (y.buffer === a.x.buffer)
      throw new ShapeError(`${label}: ln scratch shares buffer "${y.buffer.label}" with x; give it its own`);
    const ln = this.layernorm.bind(owner, { x: a.x, gamma, beta, y, eps }, `${label}.ln`);
    return [ln, ...this.bind(owner, { ...a, x: y, ln: undefined }, label)];
  }

  /**
   * A bind group for `entry`. Bindings 2 and 4 are the 16-byte views of x and W: their size is
   * rounded down to whole vec4s (the scalar binding reaches the tail); a tensor under 16 bytes
   * gets a dummy (the VEC path is never chosen for it).
   */
  private bindGroup(
    owner: Owned,
    entry: Entry,
    pipeline: GPUComputePipeline,
    label: string,
    res: Record<number, UniformSlice | GpuTensor>,
  ): GPUBindGroup {
    const entries: GPUBindGroupEntry[] = [];
    for (const b of USES[entry]) {
      const r = res[b]!;
      if (!('shape' in r)) {
        entries.push({ binding: b, resource: r });
        continue;
      }
      const full = binding(r);
      if (b === 2 || b === 4 || b === 9) {
        const size = Math.floor((full.size ?? 0) / 16) * 16;
        entries.push({
          binding: b,
          resource: size >= 16 ? { ...full, size } : { buffer: owner.buffer(`${label}.dummy`, 16, STORAGE) },
        });
      } else {
        entries.push({ binding: b, resource: full });
      }
    }
    return this.ctx.device.createBindGroup({ label, layout: pipeline.getBindGroupLayout(0), entries });
  }
}
