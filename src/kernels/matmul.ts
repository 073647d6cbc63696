/**
 * Linear-layer kernel family (shaders/matmul.wgsl): out[M, N] = x[M, K] @ W (+ bias) (gelu) (+= out).
 *
 * Variant picked per bind from M (see `variantFor`):
 *   - small M: a GEMV that reads W once per block of up to 8 rows (decode). When N alone gives
 *     too few threads to keep a GPU's memory system busy it splits K across workgroups, writes
 *     partial sums to a scratch buffer and a `reduce` dispatch applies the epilogue.
 *   - larger M: a GEMM tiled through workgroup memory (prefill).
 * On CPU adapters (lavapipe, SwiftShader) the 'kn' GEMV beats the tiled GEMM at every M measured
 * (up to 128): there every workgroup-memory read is a per-lane load, while the GEMV's x reads are
 * one broadcast per block of rows; so 'kn' stays on the GEMV there, as `gemv_kn_cols` (many columns
 * per thread; at M > 1 also several rows of x, so each W load feeds several rows). From 8 rows on,
 * where subgroups are 4 or 8 lanes (SwiftShader, lavapipe), 'kn' takes `gemm_kn_sg`
 * (shaders/matmul_subgroups.wgsl): the lanes of a subgroup share their x loads by broadcast, ~2x
 * faster at M 64-1024 there.
 * W is f32 or f16 (packed pairs, see f16.ts), layout 'kn' ([K, N], HF Conv1D) or 'nk' ([N, K], the
 * tied LM head, which may be a ChunkedTensor split by rows: one dispatch per chunk).
 * With `ln`, x is layer-normalised first: out = LN(x) @ W ... . On GPUs the 'kn' GEMV (decode
 * c_attn / c_fc) computes it in its prologue (`gemv_kn_ln`), saving the layernorm dispatch and the
 * round trip of its output; elsewhere, and on CPU adapters (where the prologue measured slower),
 * bind() returns the layernorm dispatch (into `ln.scratch` or a buffer the owner holds) followed
 * by the plain matmul.
 */
import type { GpuContext } from '../gpu/device.js';
import { InvalidOptionError, ShapeError } from '../errors.js';
import {
  binding,
  ChunkedTensor,
  Dispatch,
  expectBindable,
  expectTensor,
  f32bits,
  GpuTensor,
  groups,
  isPanelWidth,
  isPowerOfTwoIn,
  Owned,
  storedBytes,
  UniformSlice,
} from '../gpu/common.js';
import { LayerNormKernel } from './layernorm.js';

export type WeightLayout = 'kn' | 'nk';

export interface MatmulArgs {
  x: GpuTensor; // [M, K] f32
  w: GpuTensor | ChunkedTensor; // 'kn': [K, N]; 'nk': [N, K]; f32 or f16
  layout: WeightLayout;
  bias?: GpuTensor; // [N] f32
  activation?: 'none' | 'gelu'; // gelu_new, applied after the bias
  accumulate?: boolean; // out += x @ W + bias (gelu, if asked, applies before the add)
  out: GpuTensor; // [M, N] f32; must not overlap x, W or bias
  /** Forces a variant (tests, benchmarks); default: chosen from M. */
  variant?: 'gemv' | 'gemm';
  /** GEMV only: forces the number of K slices (1 = no split); default: chosen from N and K. */
  splitK?: number;
  /**
   * 'nk' GEMV with 16-byte aligned rows only: use `gemv_nk_rows` (NKR W rows for NKM rows of x per
   * thread, no lane combine) instead of `gemv_nk`. Default: the kernel's `nkRows` option.
   */
  nkRows?: boolean;
  /**
   * 'kn' GEMV with 16-byte aligned rows only: use `gemv_kn_cols` (KNV 16-byte words of a W row for
   * KNM rows of x per thread) instead of `gemv_kn`. Default: the kernel's `knCols` option.
   */
  knCols?: boolean;
  /**
   * 'kn' with M >= 8 rows and 16-byte aligned rows of W and x only: whether to take `gemm_kn_sg`
   * (see MatmulOptions.knSubgroups) instead of gemv_kn_cols. Default: the kernel's `knSubgroups`.
   */
  knSubgroups?: boolean;
  /**
   * Layer norm applied to each row of x first (gamma, beta: [K] f32; eps > 0), as GPT-2's ln_1 /
   * ln_2 / ln_f. `scratch` ([M, K] f32) receives LN(x) where it is not fused; default: a buffer
   * the owner allocates.
   */
  ln?: { gamma: GpuTensor; beta: GpuTensor; eps: number; scratch?: GpuTensor };
}

/** Largest M that takes the GEMV path on a GPU (W read once per block of 8 rows; beyond, the GEMM reuses it more). */
export const GEMV_MAX_M = 8;
/** Rows of x one GEMV workgroup handles (MAXM in the shader). */
const MAXM = 8;
/** gemv_kn threads per workgroup. */
const WG_KN = 64;
/** gemv_nk_rows: W rows per thread (NKR in the shader) and threads per workgroup. */
const NKR = 4;
const WG_NKR = 64;
/** gemv_nk_rows at M > 1: rows of x per thread (NKM in the shader; 4 x NKR = 16 vec4 accumulators). */
const NKM_DEFAULT = 4;
/**
 * gemv_kn_cols threads per workgroup (one 8-wide SIMD vector on lavapipe; small groups spread
 * narrow N over both cores), and the default 16-byte W words per thread (KNV in the shader;
 * f32: 8 x 4 columns, f16: 4 x 8; at most KNV_MAX = 8 vec4 accumulators).
 */
const WG_KNC = 8;
const KNV_DEFAULT = { f32: 8, f16: 4 };
/**
 * gemv_kn_cols for M > 1: rows of x per thread (KNM) and 16-byte W words per thread; fewer words
 * than at M = 1 so that the KNM x words (f16: x 2) vec4 accumulators stay at 16 or fewer.
 */
const KN_BLOCK_DEFAULT = { rows: 4, f32: 4, f16: 2 };
/**
 * gemv_kn_cols from M = KN_LARGE_FROM rows (prompts, batches of 16+): 8 rows of x per thread, each
 * W word reused 8 times instead of 4; measured 6-12% faster there on lavapipe, 1.6x slower at M = 4
 * (half of each block padding), hence a third pipeline rather than a new knBlock.
 */
const KN_LARGE_DEFAULT = { rows: 8, f32: 2, f16: 1 };
const KN_LARGE_FROM = 16;
/**
 * gemm_kn_sg (shaders/matmul_subgroups.wgsl; CPU adapters with 4- or 8-lane subgroups): the
 * smallest M that takes it, and from which M its workgroups take 16 rows of x instead of 8 (SGR).
 * Below 8 rows the gemv_kn_cols block is as fast (lavapipe, [768, 3072], M 4: within noise) and
 * pads less.
 */
const SG_FROM = 8;
const SG16_FROM = 16;
/** gemv_kn_cols: most vec4 accumulators per thread (KNACC_MAX in the shader). */
const KNACC_MAX = 16;
/**
 * Columns per panel of the 'kn' weights on CPU adapters (MatmulOptions.knPanel): one gemv_kn_cols
 * workgroup's columns at M = 1 (8 threads x 32), so each workgroup streams one contiguous block.
 */
const KN_PANEL_CPU = 256;
const WG_REDUCE = 256;
/** gemv_kn_red: threads per workgroup, and K groups among them (WG_RED / KG_RED = 4 column threads, 64 bytes of each row). */
const WG_RED = 256;
const KG_RED = 64;
/** GEMM tile by default: TX x TY threads, each a TM x TN block -> 64 x 64 outputs; BK deep (8 KiB of tiles). */
const GEMM_DEFAULT: GemmTile = { tx: 16, ty: 16, tm: 4, tn: 4, bk: 16 };
/** Largest TM / TN (TMAX in the shader). */
const GEMM_TMAX = 8;

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

type Entry =
  | 'gemv_kn'
  | 'gemv_kn_ln'
  | 'gemv_kn_red'
  | 'gemv_kn_cols'
  | 'gemm_kn_sg'
  | 'gemv_nk'
  | 'gemv_nk_rows'
  | 'gemm'
  | 'reduce';
/** Bindings each entry point uses (layout 'auto' holds only these). */
const USES: Record<Entry, number[]> = {
  gemv_kn: [0, 1, 3, 4, 5, 6, 7, 8], // 7, 8: unread without F_LN, but its body (shared with gemv_kn_ln) names them
  gemv_kn_ln: [0, 1, 3, 4, 5, 6, 7, 8],
  gemv_kn_red: [0, 1, 3, 4, 5, 6, 7, 8],
  gemv_kn_cols: [0, 1, 4, 5, 6],
  gemm_kn_sg: [0, 2, 4, 5, 6],
  gemv_nk: [0, 1, 2, 3, 4, 5, 6],
  gemv_nk_rows: [0, 2, 4, 5, 6],
  gemm: [0, 1, 3, 5, 6],
  reduce: [0, 1, 5, 6],
};

/** Checks a GemmTile against the shader's bounds and the adapter's workgroup limits. */
function checkGemmTile(ctx: GpuContext, g: GemmTile): GemmTile {
  const L = ctx.limits;
  const int = (v: unknown, lo: number, hi: number) => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
  const tile = { tx: g?.tx, ty: g?.ty, tm: g?.tm, tn: g?.tn, bk: g?.bk } as GemmTile;
  const bytes = tile.bk * (tile.ty * tile.tm + tile.tx * tile.tn) * 4;
  const problems = [
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
  ].filter(Boolean);
  if (problems.length)
    throw new InvalidOptionError(`MatmulKernel: gemmTile ${JSON.stringify(g)}: ${problems.join('; ')}`);
  return tile;
}

function isChunked(w: GpuTensor | ChunkedTensor): w is ChunkedTensor {
  return (w as ChunkedTensor).chunks !== undefined;
}

function overlaps(a: GpuTensor, b: GpuTensor): boolean {
  if (a.buffer !== b.buffer) return false;
  const a1 = a.offset + storedBytes(a);
  const b1 = b.offset + storedBytes(b);
  return a.offset < b1 && b.offset < a1;
}

export interface MatmulOptions {
  /**
   * Threads that share one W row in the 'nk' GEMV (the LM head): 32 (a power of two >= 8) splits
   * each row's dot product over coalesced 16-byte loads and combines them in workgroup memory,
   * what a GPU wants; 1 gives each thread a whole row with no combining, which is faster on CPU
   * adapters (lavapipe, SwiftShader), whose workgroup threads are SIMD lanes. Default: 1 on a
   * fallback / software adapter, else 32.
   */
  nkLanesPerRow?: number;
  /**
   * Largest M that takes the GEMV (larger M takes the tiled GEMM). Default: GEMV_MAX_M, except
   * 'kn' on a CPU adapter, which always takes the GEMV.
   */
  gemvMaxM?: number;
  /**
   * Whether 'nk' GEMVs (the LM head) take `gemv_nk_rows`, where each thread owns NKR whole W rows
   * (for `nkBlockRows` rows of x at M > 1): on CPU adapters a lane-varying load is a gather per
   * component, and sharing each x load and add over NKR rows makes the LM head ~1.5x faster on
   * lavapipe at M = 1. Default: on a fallback / software adapter.
   */
  nkRows?: boolean;
  /** gemv_nk_rows at M > 1: rows of x per thread (NKM), 1 ..= 4. Default 4. */
  nkBlockRows?: number;
  /**
   * Whether 'kn' GEMVs (every per-layer linear) take `gemv_kn_cols`, where each thread owns 32
   * columns (M = 1; `knBlock` for M > 1): one scalar x load then feeds 8 (f32) or 4 (f16) 16-byte W
   * gathers, not one; the per-layer GEMVs run ~1.5-2x faster on lavapipe. Default: on a fallback /
   * software adapter.
   */
  knCols?: boolean;
  /**
   * gemv_kn_cols at M > 1: rows of x per thread (1 ..= 8) and 16-byte W words per thread for f32 /
   * f16 W, with rows * words (f16: * 2) <= 16 vec4 accumulators. Default { rows: 4, f32: 4, f16: 2 }.
   */
  knBlock?: { rows: number; f32: number; f16: number };
  /**
   * gemv_kn_cols from M = `from` rows on: the same as knBlock, for large M (prompts, big batches).
   * Default { rows: 8, f32: 2, f16: 1, from: 16 }; `from` Infinity leaves every M > 1 to knBlock.
   */
  knBlockLarge?: { rows: number; f32: number; f16: number; from: number };
  /**
   * Whether 'kn' matmuls with M >= 8 rows (prompts, batches) take `gemm_kn_sg`, where the lanes
   * of a subgroup share their x loads by broadcast (shaders/matmul_subgroups.wgsl), instead of the
   * gemv_kn_cols block: ~2x faster on lavapipe at M 64-1024, 2.5x on Chromium's SwiftShader. It
   * needs the `subgroups` feature with a single subgroup size of 4 or 8 and is built only where
   * gemv_kn_cols is used (CPU adapters). Default: where available; true where it is not throws.
   */
  knSubgroups?: boolean;
  /**
   * gemm_kn_sg's lanes per workgroup, 4 or 8; default: the device's subgroup size. Tests run the
   * 4-lane kernel on lavapipe (an 8-lane subgroup with 4 lanes active); anything but the device's
   * size is for that.
   */
  knSubgroupLanes?: number;
  /**
   * gemv_kn_cols: 16-byte W words per thread for f32 / f16 W (f32 1 ..= 8, f16 1 ..= 4: each f16
   * word needs two vec4 accumulators). Default { f32: 8, f16: 4 } (32 columns).
   */
  knWords?: { f32: number; f16: number };
  /**
   * Columns per panel in which the model's 'kn' weights should be stored (`knPanel`, which the
   * engine hands to uploadWeights; see packPanels); 0 = plain row-major. A multiple of every
   * gemv_kn_cols thread's column count. Default: 256 where 'kn' GEMVs take gemv_kn_cols (CPU
   * adapters) and 256 is such a multiple (custom knWords / knBlock may make it not), else 0.
   */
  knPanel?: number;
  /**
   * Whether the 'kn' GEMV (`gemv_kn`, not `gemv_kn_cols`) applies MatmulArgs.ln in its prologue
   * (`gemv_kn_ln`); else every `ln` is a separate layernorm dispatch. Default: on GPUs, not on CPU
   * adapters (there the prologue measured 1.1-1.25x slower at M = 1 than the dispatch it saves).
   */
  fuseLn?: boolean;
  /**
   * How the GPU 'kn' GEMV (`gemv_kn`, not `gemv_kn_cols`) splits K when the output is too narrow
   * to keep a large GPU busy: 'split' spreads K slices over workgroups and sums their partials in a
   * second `reduce` dispatch (two dispatches per linear layer); 'workgroup' (`gemv_kn_red`) spreads
   * K over 64 groups of each 256-thread workgroup and sums them in workgroup memory (one dispatch,
   * log2 64 barriers, 16 f32 / 32 f16 columns per workgroup). Default: 'workgroup' on GPUs,
   * 'split' on CPU adapters (whose 'kn' GEMV is gemv_kn_cols, unsplit; there barriers turn a
   * shader into coroutines). Why 'workgroup' on GPUs, reasoned, not yet measured on one: for every
   * gpt2 / gpt2-xl decode GEMV it has more threads in flight (gpt2 c_proj: 12288 against 2304)
   * and shorter serial K walks per thread (12-48 rows against 64) than the split, and 48 fewer
   * dispatches per gpt2 step (~5 us each on an H100); `bench --gemv-reduce split` compares. The
   * pipelines of 'workgroup' are built only when it is chosen.
   */
  gemvReduce?: 'split' | 'workgroup';
  /**
   * The tiled GEMM's shape (prefill, M > gemvMaxM): tm, tn in [1, 8], tx * tn and bk even (f16
   * words pair adjacent elements), tx * ty threads within the adapter's workgroup limits, and
   * bk * (ty * tm + tx * tn) * 4 bytes of tiles within its workgroup storage. Default
   * { tx: 16, ty: 16, tm: 4, tn: 4, bk: 16 } (64 x 64 tiles); `bench --gemm-tile` tries others.
   */
  gemmTile?: GemmTile;
  /** The layernorm kernel for `ln` where it is not fused (a model shares its own); default: one of its own. */
  layernorm?: LayerNormKernel;
}

export class MatmulKernel {
  private constructor(
    private readonly ctx: GpuContext,
    /** key `${entry}:${f16}:${vec}` (gemm: `gemm:${f16}:${nk}`) */
    private readonly pipelines: Map<string, GPUComputePipeline>,
    /** gemv_nk lanes per W row and threads per workgroup. */
    readonly lpr: number,
    private readonly wgNk: number,
    /** Largest M per layout that takes the GEMV (MatmulOptions.gemvMaxM; Infinity: always). */
    readonly gemvMax: Readonly<Record<WeightLayout, number>>,
    /** Default for MatmulArgs.nkRows. */
    readonly nkRows: boolean,
    /** Default for MatmulArgs.knCols. */
    readonly knCols: boolean,
    /** gemv_kn_cols words per thread. */
    readonly knWords: { f32: number; f16: number },
    /** gemv_kn_cols at M > 1: rows of x and words per thread. */
    readonly knBlock: { rows: number; f32: number; f16: number },
    /** The same from M = knBlockLarge.from on. */
    readonly knBlockLarge: { rows: number; f32: number; f16: number; from: number },
    /** gemv_nk_rows at M > 1: rows of x per thread. */
    readonly nkBlockRows: number,
    /** Columns per panel for the model's 'kn' weights (0: plain); see MatmulOptions.knPanel. */
    readonly knPanel: number,
    /** Whether gemv_kn fuses MatmulArgs.ln (MatmulOptions.fuseLn). */
    readonly fuseLn: boolean,
    /** How gemv_kn splits K (MatmulOptions.gemvReduce). */
    readonly gemvReduce: 'split' | 'workgroup',
    /** The tiled GEMM's shape (MatmulOptions.gemmTile). */
    readonly gemmTile: GemmTile,
    /** Whether 'kn' matmuls of SG_FROM+ rows take gemm_kn_sg (MatmulOptions.knSubgroups). */
    readonly knSubgroups: boolean,
    /** gemm_kn_sg's lanes per workgroup (SGL; MatmulOptions.knSubgroupLanes). */
    readonly knSubgroupLanes: number,
    private readonly layernorm: LayerNormKernel,
  ) {}

  /** The variant `bind` picks for M rows of x with this layout. */
  variantFor(M: number, layout: WeightLayout): 'gemv' | 'gemm' {
    return M <= this.gemvMax[layout] ? 'gemv' : 'gemm';
  }

  /**
   * Whether a 'kn' matmul of M rows of x, K long, whose W gemv_kn_cols can read, takes gemm_kn_sg:
   * SG_FROM+ rows, x rows of whole 16-byte words (K % 4), no split of K asked for.
   */
  takesSubgroups(M: number, K: number, splitK?: number, asked = this.knSubgroups): boolean {
    return asked && this.knSubgroups && M >= SG_FROM && K % 4 === 0 && (splitK ?? 1) === 1;
  }

  static async create(ctx: GpuContext, opts: MatmulOptions = {}): Promise<MatmulKernel> {
    const cpu = ctx.isCpuAdapter;
    const knWords = opts.knWords ?? KNV_DEFAULT;
    const okWords = (v: number, max: number) => Number.isInteger(v) && v >= 1 && v <= max;
    if (!okWords(knWords.f32, 8) || !okWords(knWords.f16, 4)) {
      throw new InvalidOptionError(
        `MatmulKernel: knWords must be integers, f32 in [1, 8] and f16 in [1, 4], got ${JSON.stringify(knWords)}`,
      );
    }
    const knBlock = opts.knBlock ?? KN_BLOCK_DEFAULT;
    const knBlockLarge = opts.knBlockLarge ?? { ...KN_LARGE_DEFAULT, from: KN_LARGE_FROM };
    for (const [what, b] of [
      ['knBlock', knBlock],
      ['knBlockLarge', knBlockLarge],
    ] as const) {
      if (
        !okWords(b.rows, 8) ||
        !okWords(b.f32, 8) ||
        !okWords(b.f16, 4) ||
        b.rows * Math.max(b.f32, 2 * b.f16) > KNACC_MAX
      ) {
        throw new InvalidOptionError(
          `MatmulKernel: ${what} needs integers rows in [1, 8], f32 in [1, 8], f16 in [1, 4], rows * max(f32, 2 * f16) <= ${KNACC_MAX}; got ${JSON.stringify(b)}`,
        );
      }
    }
    if (!(knBlockLarge.from === Infinity || (Number.isInteger(knBlockLarge.from) && knBlockLarge.from >= 2))) {
      throw new InvalidOptionError(
        `MatmulKernel: knBlockLarge.from must be an integer >= 2 (the smallest M that takes it) or Infinity, got ${knBlockLarge.from}`,
      );
    }
    if (opts.gemvMaxM !== undefined && !(opts.gemvMaxM >= 0)) {
      throw new InvalidOptionError(`MatmulKernel: gemvMaxM must be a number >= 0, got ${opts.gemvMaxM}`);
    }
    const gemvMax =
      opts.gemvMaxM !== undefined
        ? { kn: opts.gemvMaxM, nk: opts.gemvMaxM }
        : { kn: cpu ? Infinity : GEMV_MAX_M, nk: cpu ? Infinity : GEMV_MAX_M };
    // Panels (and the transposed LM head) are read by gemv_kn_cols alone: where some M takes the
    // GEMM, the weights must stay plain.
    const gemmReachable = Number.isFinite(gemvMax.kn) || Number.isFinite(gemvMax.nk);
    const knCols = opts.knCols ?? cpu;
    const colsPerThread = [
      4 * knWords.f32,
      8 * knWords.f16,
      4 * knBlock.f32,
      8 * knBlock.f16,
      4 * knBlockLarge.f32,
      8 * knBlockLarge.f16,
    ];
    const panelFits = colsPerThread.every((c) => KN_PANEL_CPU % c === 0);
    const knPanel = opts.knPanel ?? (knCols && panelFits && !gemmReachable ? KN_PANEL_CPU : 0);
    if (knPanel > 0 && gemmReachable) {
      throw new InvalidOptionError(
        `MatmulKernel: knPanel ${knPanel} stores weights that only gemv_kn_cols reads, but with gemvMaxM ${gemvMax.kn} the GEMM takes M > ${gemvMax.kn} and needs them plain; leave knPanel unset (0)`,
      );
    }
    if (!(Number.isInteger(knPanel) && knPanel >= 0) || (knPanel > 0 && colsPerThread.some((c) => knPanel % c !== 0))) {
      throw new InvalidOptionError(
        `MatmulKernel: knPanel must be 0 or a multiple of every gemv_kn_cols thread's columns (${[...new Set(colsPerThread)].join(', ')}), got ${knPanel}`,
      );
    }
    const gemvReduce = opts.gemvReduce ?? (cpu ? 'split' : 'workgroup');
    if (gemvReduce !== 'split' && gemvReduce !== 'workgroup') {
      throw new InvalidOptionError(
        `MatmulKernel: gemvReduce must be 'split' or 'workgroup', got ${JSON.stringify(gemvReduce)}`,
      );
    }
    const gemmTile = checkGemmTile(ctx, opts.gemmTile ?? GEMM_DEFAULT);
    const nkBlockRows = opts.nkBlockRows ?? NKM_DEFAULT;
    if (!okWords(nkBlockRows, 4))
      throw new InvalidOptionError(`MatmulKernel: nkBlockRows must be an integer in [1, 4], got ${nkBlockRows}`);
    const LPR = opts.nkLanesPerRow ?? (cpu ? 1 : 32);
    if (!(LPR === 1 || isPowerOfTwoIn(LPR, MAXM, 256))) {
      throw new InvalidOptionError(
        `MatmulKernel: nkLanesPerRow must be 1 or a power of two in [${MAXM}, 256], got ${LPR}`,
      );
    }
    if (opts.knSubgroups !== undefined && typeof opts.knSubgroups !== 'boolean') {
      throw new InvalidOptionError(
        `MatmulKernel: knSubgroups must be a boolean, got ${JSON.stringify(opts.knSubgroups)}`,
      );
    }
    const size = ctx.features.subgroupSize;
    const sgReady = knCols && (size === 4 || size === 8);
    if (opts.knSubgroups === true && !sgReady) {
      throw new InvalidOptionError(
        `MatmulKernel: knSubgroups needs gemv_kn_cols (knCols: CPU adapters) and the 'subgroups' feature with a single subgroup size of 4 or 8; here knCols ${knCols}, subgroups ${ctx.features.subgroups}, subgroup size ${size ?? 'not a single size'}`,
      );
    }
    const knSubgroups = opts.knSubgroups ?? sgReady;
    if (opts.knSubgroupLanes !== undefined && opts.knSubgroupLanes !== 4 && opts.knSubgroupLanes !== 8) {
      throw new InvalidOptionError(
        `MatmulKernel: knSubgroupLanes must be 4 or 8, got ${JSON.stringify(opts.knSubgroupLanes)}`,
      );
    }
    const sgl = opts.knSubgroupLanes ?? (size === 4 ? 4 : 8);
    // LPR 1: 64 rows per workgroup; else 256 threads = 256 / LPR rows.
    const WG_NK = LPR === 1 ? 64 : 256;
    const want: Array<[string, string, Record<string, number>]> = [];
    for (const f16 of [0, 1]) {
      for (const vec of [0, 1]) {
        want.push([`gemv_kn:${f16}:${vec}`, 'gemv_kn', { W_F16: f16, VEC: vec, WG: WG_KN }]);
        want.push([`gemv_kn_ln:${f16}:${vec}`, 'gemv_kn_ln', { W_F16: f16, VEC: vec, WG: WG_KN }]);
        if (gemvReduce === 'workgroup')
          want.push([`gemv_kn_red:${f16}:${vec}`, 'gemv_kn_red', { W_F16: f16, VEC: vec, WG: WG_RED, KG: KG_RED }]);
        want.push([`gemv_nk:${f16}:${vec}`, 'gemv_nk', { W_F16: f16, VEC: vec, WG: WG_NK, LPR }]);
      }
      want.push([`gemv_nk_rows:${f16}:1`, 'gemv_nk_rows', { W_F16: f16, VEC: 1, WG: WG_NKR, NKM: 1 }]);
      want.push([`gemv_nk_rows:${f16}:1:block`, 'gemv_nk_rows', { W_F16: f16, VEC: 1, WG: WG_NKR, NKM: nkBlockRows }]);
      want.push([
        `gemv_kn_cols:${f16}:1`,
        'gemv_kn_cols',
        { W_F16: f16, VEC: 1, WG: WG_KNC, KNV: f16 ? knWords.f16 : knWords.f32, KNM: 1 },
      ]);
      want.push([
        `gemv_kn_cols:${f16}:1:block`,
        'gemv_kn_cols',
        { W_F16: f16, VEC: 1, WG: WG_KNC, KNV: f16 ? knBlock.f16 : knBlock.f32, KNM: knBlock.rows },
      ]);
      if (knCols && knBlockLarge.from !== Infinity) {
        want.push([
          `gemv_kn_cols:${f16}:1:large`,
          'gemv_kn_cols',
          { W_F16: f16, VEC: 1, WG: WG_KNC, KNV: f16 ? knBlockLarge.f16 : knBlockLarge.f32, KNM: knBlockLarge.rows },
        ]);
      }
      if (knSubgroups) {
        for (const sgr of [8, 16])
          want.push([`gemm_kn_sg:${f16}:1:${sgr}`, 'gemm_kn_sg', { W_F16: f16, VEC: 1, SGR: sgr, SGL: sgl }]);
      }
      for (const nk of [0, 1]) {
        want.push([
          `gemm:${f16}:${nk}`,
          'gemm',
          { W_F16: f16, NK: nk, TX: gemmTile.tx, TY: gemmTile.ty, TM: gemmTile.tm, TN: gemmTile.tn, BK: gemmTile.bk },
        ]);
      }
    }
    want.push(['reduce', 'reduce', { WG: WG_REDUCE }]);
    const [layernorm, ...built] = (await Promise.all([
      opts.layernorm ?? LayerNormKernel.create(ctx),
      ...want.map(([, entry, c]) =>
        ctx.pipeline(entry === 'gemm_kn_sg' ? 'matmul+matmul_subgroups' : 'matmul', entry, c),
      ),
    ])) as [LayerNormKernel, ...GPUComputePipeline[]];
    return new MatmulKernel(
      ctx,
      new Map(want.map(([key], i) => [key, built[i]!])),
      LPR,
      WG_NK,
      gemvMax,
      opts.nkRows ?? cpu,
      knCols,
      knWords,
      knBlock,
      knBlockLarge,
      nkBlockRows,
      knPanel,
      opts.fuseLn ?? !cpu,
      gemvReduce,
      gemmTile,
      knSubgroups,
      sgl,
      layernorm,
    );
  }

  bind(owner: Owned, a: MatmulArgs, label = 'matmul'): Dispatch[] {
    const ctx = this.ctx;
    if (a.layout !== 'kn' && a.layout !== 'nk')
      throw new ShapeError(`${label}: layout must be 'kn' or 'nk', got ${String(a.layout)}`);
    if (a.x.shape.length !== 2) throw new ShapeError(`${label}: x must be 2-D [M, K], got [${a.x.shape.join(', ')}]`);
    const [M, K] = a.x.shape as [number, number];
    expectTensor(`${label} x`, a.x, [M, K], ['f32']);
    if (M < 1 || K < 1) throw new ShapeError(`${label}: x must have M >= 1 and K >= 1, got [${M}, ${K}]`);

    // The weight as a list of [rows, cols] pieces (one unless chunked).
    let pieces: GpuTensor[];
    let N: number;
    let dtype: 'f32' | 'f16';
    // The layout the pieces are stored in: a transposed chunked 'nk' W is read as 'kn' pieces.
    let layout: WeightLayout = a.layout;
    let panel: number | undefined;
    const w = a.w;
    if (isChunked(w)) {
      if (a.layout !== 'nk') {
        throw new ShapeError(
          `${label}: a ChunkedTensor weight needs layout 'nk' (chunks split W's rows = out columns); got 'kn' with shape [${w.shape.join(', ')}]. Store [K, N] weights whole`,
        );
      }
      const [rows, cols] = w.shape;
      if (cols !== K) throw new ShapeError(`${label}: W is [${rows}, ${cols}] ('nk': [N, K]) but x has K = ${K}`);
      if (!(w.rowsPerChunk >= 1) || w.chunks.length !== Math.ceil(rows / w.rowsPerChunk)) {
        throw new ShapeError(
          `${label}: chunked W [${rows}, ${cols}] with rowsPerChunk ${w.rowsPerChunk} needs ${Math.ceil(rows / w.rowsPerChunk)} chunks, got ${w.chunks.length}`,
        );
      }
      if (w.dtype !== 'f32' && w.dtype !== 'f16')
        throw new ShapeError(`${label}: W dtype must be f32 or f16, got ${w.dtype}`);
      if (w.transposed) {
        layout = 'kn';
        panel = w.chunks[0]?.panel;
        if (panel === undefined)
          throw new ShapeError(
            `${label}: a transposed chunked W must be stored in panels (GpuTensor.panel); chunk 0 has none`,
          );
      }
      w.chunks.forEach((c, i) => {
        const r = Math.min(rows, (i + 1) * w.rowsPerChunk) - i * w.rowsPerChunk;
        expectBindable(ctx, `${label} W chunk ${i}`, c);
        expectTensor(`${label} W chunk ${i}`, c, w.transposed ? [K, r] : [r, K], [w.dtype]);
        if (c.panel !== panel)
          throw new ShapeError(
            `${label}: W chunk ${i} has panel ${c.panel ?? 'none'}, chunk 0 ${panel ?? 'none'}; chunks must share one layout`,
          );
      });
      pieces = w.chunks;
      N = rows;
      dtype = w.dtype;
    } else {
      if (w.shape.length !== 2) throw new ShapeError(`${label}: W must be 2-D, got [${w.shape.join(', ')}]`);
      const [r, c] = w.shape as [number, number];
      const wk = a.layout === 'kn' ? r : c;
      N = a.layout === 'kn' ? c : r;
      if (wk !== K) {
        throw new ShapeError(
          `${label}: W is [${r}, ${c}] (layout '${a.layout}': ${a.layout === 'kn' ? '[K, N]' : '[N, K]'}) but x has K = ${K}`,
        );
      }
      expectBindable(ctx, `${label} W`, w);
      expectTensor(`${label} W`, w, [r, c], ['f32', 'f16']);
      pieces = [w];
      dtype = w.dtype as 'f32' | 'f16';
      panel = w.panel;
    }
    if (N < 1) throw new ShapeError(`${label}: W has N = 0`);
    expectTensor(`${label} out`, a.out, [M, N], ['f32']);
    expectBindable(ctx, `${label} x`, a.x);
    expectBindable(ctx, `${label} out`, a.out);
    if (a.bias) {
      expectTensor(`${label} bias`, a.bias, [N], ['f32']);
      expectBindable(ctx, `${label} bias`, a.bias);
    }
    const reads: Array<[string, GpuTensor]> = [
      ['x', a.x],
      ...pieces.map((p, i): [string, GpuTensor] => [pieces.length > 1 ? `W chunk ${i}` : 'W', p]),
    ];
    if (a.bias) reads.push(['bias', a.bias]);
    if (a.ln) {
      for (const [what, t] of [
        ['ln gamma', a.ln.gamma],
        ['ln beta', a.ln.beta],
      ] as const) {
        expectTensor(`${label} ${what}`, t, [K], ['f32']);
        expectBindable(ctx, `${label} ${what}`, t);
        reads.push([what, t]);
      }
      if (!(a.ln.eps > 0 && Number.isFinite(a.ln.eps)))
        throw new ShapeError(`${label}: ln eps must be a finite number > 0, got ${a.ln.eps}`);
    }
    // WebGPU validates usage per buffer, not per range: a buffer bound read_write in a dispatch
    // may not be bound read-only in it too, even at disjoint bytes.
    for (const [what, t] of reads) {
      if (t.buffer === a.out.buffer) {
        const how = overlaps(t, a.out) ? 'overlapping' : 'disjoint';
        throw new ShapeError(
          `${label}: out and ${what} share buffer "${a.out.buffer.label}" (${how} bytes ${a.out.offset}.. and ${t.offset}..); WebGPU forbids binding one buffer writable and read-only in the same dispatch: give out its own buffer`,
        );
      }
    }
    const align = ctx.limits.minStorageBufferOffsetAlignment;
    for (const [what, t] of [...reads, ['out', a.out] as [string, GpuTensor]]) {
      if (t.offset % align !== 0)
        throw new ShapeError(
          `${label}: ${what} offset ${t.offset} is not a multiple of minStorageBufferOffsetAlignment ${align}`,
        );
    }
    const act = a.activation ?? 'none';
    if (act !== 'none' && act !== 'gelu')
      throw new ShapeError(`${label}: activation must be 'none' or 'gelu', got ${String(act)}`);
    const flags = (a.bias ? F_BIAS : 0) | (act === 'gelu' ? F_GELU : 0) | (a.accumulate ? F_ACC : 0);

    const variant = a.variant ?? this.variantFor(M, layout);
    const f16 = dtype === 'f16' ? 1 : 0;
    const wordsPerRow = (cols: number) => (f16 ? Math.ceil(cols / 2) : cols);
    const biasT = a.bias ?? a.x; // bound but unread when there is no bias (read-only aliasing is allowed)

    if (variant === 'gemm') {
      if (a.ln) return this.lnFirst(owner, a, label);
      if (panel !== undefined) {
        throw new ShapeError(
          `${label}: W is stored in panels of ${panel} columns, which only the 'kn' gemv_kn_cols GEMV reads; the GEMM needs it plain (knPanel 0)`,
        );
      }
      const pipeline = this.pipelines.get(`gemm:${f16}:${a.layout === 'nk' ? 1 : 0}`)!;
      const BM = this.gemmTile.ty * this.gemmTile.tm;
      const BN = this.gemmTile.tx * this.gemmTile.tn;
      let nOff = 0;
      return pieces.map((wp, i) => {
        const n = a.layout === 'kn' ? N : wp.shape[0]!;
        const wpr = wordsPerRow(a.layout === 'kn' ? N : K);
        const params = owner.uniform(
          `${label}.params${i}`,
          [M, n, K, wpr, N, nOff, K, flags, 0, 0] /* Params: pw, eps unused */,
        );
        const wg: [number, number, number] = [
          groups(ctx, label, Math.ceil(n / BN)),
          groups(ctx, label, Math.ceil(M / BM)),
          1,
        ];
        nOff += n;
        const bg = this.bindGroup(owner, 'gemm', pipeline, label, { 0: params, 1: a.x, 3: wp, 5: biasT, 6: a.out });
        return {
          family: 'matmul',
          label: pieces.length > 1 ? `${label}[${i}]` : label,
          pipeline,
          bindGroup: bg,
          workgroups: wg,
        };
      });
    }
    if (variant !== 'gemv') throw new ShapeError(`${label}: variant must be 'gemv' or 'gemm', got ${String(variant)}`);

    // GEMV. 16-byte loads need 16-byte aligned W rows (and x rows for nk); a paneled W's stored
    // rows are its panels (zero-padded, so any N), checked against the thread width below.
    const per = f16 ? 8 : 4; // elements per 16-byte load
    const vec = alignedRows(panel ?? (layout === 'kn' ? N : K), dtype);
    const rows = layout === 'nk' && vec && (a.nkRows ?? this.nkRows);
    const cols = layout === 'kn' && vec && (a.knCols ?? this.knCols);
    // gemv_kn_cols / gemv_nk_rows: M = 1 has its own pipeline (KNM / NKM = 1), M > 1 the block one.
    // gemm_kn_sg: the subgroup GEMM for SG_FROM+ rows of x, which it reads as vec4 along K (K % 4)
    // and never splits (its row blocks already outnumber the cores).
    const wantSg = a.knSubgroups ?? this.knSubgroups;
    if (wantSg && !this.knSubgroups) {
      throw new InvalidOptionError(
        `${label}: knSubgroups was asked for, but this MatmulKernel has no gemm_kn_sg pipelines (they need a CPU adapter with 4- or 8-lane subgroups; see MatmulOptions.knSubgroups)`,
      );
    }
    const sg = cols && this.takesSubgroups(M, K, a.splitK, wantSg);
    const block = (cols || rows) && M > 1;
    const large = block && cols && M >= this.knBlockLarge.from && this.pipelines.has(`gemv_kn_cols:${f16}:1:large`);
    const kb = large ? this.knBlockLarge : this.knBlock;
    const knv = block && cols ? (f16 ? kb.f16 : kb.f32) : f16 ? this.knWords.f16 : this.knWords.f32;
    // gemv_kn fuses `ln` through its own entry point (whose barriers would slow the plain one on lavapipe).
    const fused = a.ln !== undefined && this.fuseLn && layout === 'kn' && !cols;
    if (a.ln && !fused) return this.lnFirst(owner, a, label);
    const red = layout === 'kn' && !cols && this.gemvReduce === 'workgroup';
    const entry: Entry =
      layout === 'kn'
        ? sg
          ? 'gemm_kn_sg'
          : cols
            ? 'gemv_kn_cols'
            : red
              ? 'gemv_kn_red'
              : fused
                ? 'gemv_kn_ln'
                : 'gemv_kn'
        : rows
          ? 'gemv_nk_rows'
          : 'gemv_nk';
    const sgr = M >= SG16_FROM ? 16 : 8; // gemm_kn_sg: rows of x per workgroup
    const pipeline = this.pipelines.get(
      sg ? `gemm_kn_sg:${f16}:1:${sgr}` : `${entry}:${f16}:${vec ? 1 : 0}${large ? ':large' : block ? ':block' : ''}`,
    )!;
    // A paneled W: only gemv_kn_cols reads panels, a whole number of threads per panel.
    if (panel !== undefined) {
      if (!cols) {
        throw new ShapeError(
          `${label}: W is stored in panels of ${panel} columns, which only the 'kn' gemv_kn_cols GEMV reads (CPU adapters, panel % ${per} == 0); here layout '${layout}', N ${N}, variant ${variant}${a.knCols === false ? ', knCols false' : ''}. Upload it plain (knPanel 0)`,
        );
      }
      if (panel % (per * knv) !== 0) {
        throw new ShapeError(
          `${label}: W panels of ${panel} columns are not a multiple of a gemv_kn_cols thread's ${per * knv} columns`,
        );
      }
    }
    const pw = panel !== undefined ? panel / per : 0;
    const mb = sg ? sgr : !block ? (cols || rows ? 1 : MAXM) : cols ? kb.rows : this.nkBlockRows; // rows of x per z block
    const zBlocks = groups(ctx, label, Math.ceil(M / mb));
    const threads = layout === 'kn' ? Math.ceil(N / per) : N * this.lpr;
    // K slices: multiples of 8 so every slice starts on a 16-byte load of either dtype.
    let S: number;
    if (a.splitK !== undefined) {
      if (!Number.isInteger(a.splitK) || a.splitK < 1)
        throw new ShapeError(`${label}: splitK must be an integer >= 1, got ${a.splitK}`);
      S = a.splitK;
    } else if (rows || cols || red) {
      S = 1; // CPU-adapter variants: their threads already outnumber the cores; gemv_kn_red splits K inside its workgroups
    } else {
      S = threads >= TARGET_THREADS ? 1 : Math.min(Math.ceil(TARGET_THREADS / threads), Math.floor(K / MIN_KSLICE));
      // The partials [S, M, N] must fit one binding.
      S = Math.max(1, Math.min(S, Math.floor(ctx.limits.maxStorageBufferBindingSize / (M * N * 4))));
    }
    const kslice = S <= 1 ? K : Math.ceil(Math.ceil(K / S) / 8) * 8;
    S = Math.ceil(K / kslice);
    let dst = a.out;
    let partials: GpuTensor | undefined;
    if (S > 1) {
      partials = {
        buffer: owner.buffer(`${label}.partials`, S * M * N * 4, STORAGE),
        offset: 0,
        shape: [S, M, N],
        dtype: 'f32',
      };
      expectBindable(ctx, `${label} split-K partials (splitK ${S})`, partials);
      dst = partials;
    }
    const out: Dispatch[] = [];
    let nOff = 0;
    pieces.forEach((wp, i) => {
      // Columns of this piece: a 'kn' piece's second dimension (all of N unless chunked), an 'nk' one's first.
      const n = layout === 'kn' ? wp.shape[1]! : wp.shape[0]!;
      // u32 words per W row; a paneled row (gemv_kn_cols) counts whole 16-byte words, the padded panel tail included.
      const wpr = layout === 'nk' ? wordsPerRow(K) : panel !== undefined ? Math.ceil(n / per) * 4 : wordsPerRow(n);
      const fl = (S > 1 ? F_PARTIAL : flags) | (a.ln ? F_LN : 0);
      const params = owner.uniform(`${label}.params${i}`, [
        M,
        n,
        K,
        wpr,
        N,
        nOff,
        kslice,
        fl,
        pw,
        f32bits(a.ln?.eps ?? 0),
      ]);
      const gx = sg
        ? Math.ceil(Math.ceil(n / per) / this.knSubgroupLanes)
        : cols
          ? Math.ceil(Math.ceil(n / per / knv) / WG_KNC)
          : red
            ? Math.ceil(Math.ceil(n / per) / (WG_RED / KG_RED))
            : layout === 'kn'
              ? Math.ceil(Math.ceil(n / per) / WG_KN)
              : rows
                ? Math.ceil(Math.ceil(n / NKR) / WG_NKR)
                : Math.ceil(n / (this.wgNk / this.lpr));
      const bg = this.bindGroup(owner, entry, pipeline, label, {
        0: params,
        1: a.x,
        2: a.x,
        3: wp,
        4: wp,
        5: biasT,
        6: dst,
        7: a.ln?.gamma ?? a.x,
        8: a.ln?.beta ?? a.x,
      });
      out.push({
        family: 'matmul',
        label: pieces.length > 1 ? `${label}[${i}]` : label,
        pipeline,
        bindGroup: bg,
        workgroups: [groups(ctx, label, gx), groups(ctx, label, S), zBlocks],
      });
      nOff += n;
    });
    if (partials) {
      const rp = this.pipelines.get('reduce')!;
      const total = Math.ceil((M * N) / WG_REDUCE);
      const gx = Math.min(total, ctx.limits.maxComputeWorkgroupsPerDimension);
      const gy = groups(ctx, label, Math.ceil(total / gx));
      const params = owner.uniform(
        `${label}.reduce.params`,
        [M, N, S, gx, N, 0, K, flags, 0, 0] /* Params: pw, eps unused */,
      );
      const bg = this.bindGroup(owner, 'reduce', rp, `${label}.reduce`, { 0: params, 1: partials, 5: biasT, 6: a.out });
      out.push({ family: 'matmul', label: `${label}.reduce`, pipeline: rp, bindGroup: bg, workgroups: [gx, gy, 1] });
    }
    return out;
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
      if (b === 2 || b === 4) {
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

/**
 * Whether rows of `cols` elements of `dtype` are 16-byte aligned (f32: cols % 4, f16: cols % 8), so
 * the GEMVs read them with vec4 loads; gemv_kn_cols, and so panels, need it.
 */
export function alignedRows(cols: number, dtype: 'f32' | 'f16'): boolean {
  return cols % (dtype === 'f16' ? 8 : 4) === 0;
}

/**
 * The transpose [cols, rows] of a row-major [rows, cols] matrix, laid out in column panels as
 * packPanels would lay it: panel q is source rows [q * panel, q * panel + panel) as a [cols, panel]
 * block, the last zero-padded. The CPU-adapter LM head reads wte chunks this way.
 */
export function packPanelsTransposed(src: ArrayLike<number>, rows: number, cols: number, panel: number): Float32Array {
  if (!isPanelWidth(panel))
    throw new ShapeError(`packPanelsTransposed: panel must be an even integer >= 2, got ${panel}`);
  if (src.length !== rows * cols)
    throw new ShapeError(`packPanelsTransposed: ${src.length} values for a [${rows}, ${cols}] matrix`);
  const np = Math.ceil(rows / panel);
  const out = new Float32Array(np * cols * panel);
  // Tiles of TB source columns: a row's TB values are contiguous reads and land in TB output rows
  // of the panel that the next source rows fill further along, so both sides stay in cache (a
  // whole source row at a time scatters its values 4 x panel bytes apart).
  const TB = 32;
  for (let q = 0; q < np; q++) {
    const r0 = q * panel;
    const r1 = Math.min(rows, r0 + panel);
    const base = q * cols * panel - r0;
    for (let c0 = 0; c0 < cols; c0 += TB) {
      const c1 = Math.min(cols, c0 + TB);
      for (let r = r0; r < r1; r++) {
        const i = r * cols;
        const o = base + r;
        for (let c = c0; c < c1; c++) out[o + c * panel] = src[i + c]!;
      }
    }
  }
  return out;
}

/**
 * Re-lays a row-major [rows, cols] matrix into column panels: ceil(cols / panel) panels, each
 * [rows, panel] row-major, the last zero-padded; the layout gemv_kn_cols reads when
 * GpuTensor.panel is set. f16 packing then runs over [panels * rows, panel] (panel is even).
 */
export function packPanels(src: ArrayLike<number>, rows: number, cols: number, panel: number): Float32Array {
  if (!isPanelWidth(panel)) throw new ShapeError(`packPanels: panel must be an even integer >= 2, got ${panel}`);
  if (src.length !== rows * cols)
    throw new ShapeError(`packPanels: ${src.length} values for a [${rows}, ${cols}] matrix`);
  const np = Math.ceil(cols / panel);
  const out = new Float32Array(np * rows * panel);
  for (let q = 0; q < np; q++) {
    const c0 = q * panel;
    const w = Math.min(panel, cols - c0);
    for (let r = 0; r < rows; r++) {
      const o = (q * rows + r) * panel;
      const i = r * cols + c0;
      // A Float32Array row piece is one contiguous copy (a model's load runs this over every matrix).
      if (src instanceof Float32Array) out.set(src.subarray(i, i + w), o);
      else for (let c = 0; c < w; c++) out[o + c] = src[i + c]!;
    }
  }
  return out;
}
