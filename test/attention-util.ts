/**
 * The attention kernels' test scenarios and their check against the float64 reference, shared by
 * attention.test.ts (f32 caches) and attention-f16.test.ts (f16 caches).
 */
import * as assert from 'uvu/assert';
import { AttentionKernel, AttentionProfile, AttentionVariant } from '../src/kernels/attention.js';
import type { GpuContext } from '../src/gpu/device.js';
import { KvWriteKernel, type KvDtype } from '../src/kernels/kvcache.js';
import { packF16, roundF16 } from '../src/kernels/f16.js';
import { allClose, download, downloadU32, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { attention64, RowHistory } from './reference/attention.js';

/** Attention choices that build nothing beyond the 32-thread workgroup kernel ('query'). */
export const QUERY: AttentionProfile = { decode: 'query', prompt: 'query', decodeWg: 256, subgroupLanes: 8 };

/** Attention choices that build `variant` (as the decode or the prompt kernel), with `over` on top. */
export function profileFor(
  ctx: GpuContext,
  variant: AttentionVariant,
  over: Partial<AttentionProfile> = {},
): AttentionProfile {
  const sg = Math.min(8, ctx.features.subgroupSize ?? 8);
  const choice: Record<AttentionVariant, Partial<AttentionProfile>> = {
    query: {},
    wide: { decode: 'wide' },
    lanes: { decode: 'lanes', prompt: 'pairs' },
    pairs: { decode: 'lanes', prompt: 'pairs' },
    blocks: { decode: 'lanes', prompt: 'blocks' },
    tiled: { prompt: 'tiled' },
    subgroup: { decode: 'lanes', prompt: 'subgroup', subgroupLanes: sg as 4 | 8 },
  };
  return { ...QUERY, ...choice[variant], ...over };
}

/** A kernel for head size D whose profile builds `variant`. */
export function kernelFor(
  ctx: GpuContext,
  D: number,
  variant: AttentionVariant,
  over: Partial<AttentionProfile> = {},
  blocksScratchBytes?: number,
  kvDtype: KvDtype = 'f32',
): Promise<AttentionKernel> {
  return AttentionKernel.create(ctx, { ...profileFor(ctx, variant, over), headDim: D, blocksScratchBytes, kvDtype });
}

export interface Scenario {
  C: number;
  nHead: number;
  cap: number;
  /** Positions each cache row already holds before this step (0..prior-1). */
  prior: number[];
  /** This step's tokens, in order: [row, how many new consecutive positions]. */
  step: Array<[number, number]>;
}

/**
 * Builds a step: random history for the prior positions written into NaN-filled caches at slot
 * pos % cap (later positions overwrite earlier ones, as the ring does), random qkv for the new
 * tokens; runs kv_write then attention; compares with the float64 reference over the logical
 * history. NaN in every unwritten slot makes any read outside a row's window show. With writeKv
 * (decode steps: one token per row) there is no kv_write: the attention kernel must put each
 * token's k and v in its slot itself, and afterwards the caches must hold exactly the history
 * plus those (nothing else written).
 */
export async function check(
  sc: Scenario,
  seed: number,
  variant: AttentionVariant,
  writeKv = false,
  over: Partial<AttentionProfile> = {},
  blocksScratchBytes?: number,
  kvDtype: KvDtype = 'f32',
): Promise<void> {
  await withDevice(async ({ ctx, owned }) => {
    const { C, nHead, cap } = sc;
    const rows = sc.prior.length;
    const rng = new Rng(seed);
    // f16 caches hold K/V rounded to halves (and NaN halves where unwritten): the reference attends
    // over the same rounded values, so the kernels' tolerance is the f32 one.
    const f16 = kvDtype === 'f16';
    const stored = (x: Float32Array) => (f16 ? x.map(roundF16) : x);
    const asCache = (x: Float32Array) => (f16 ? packF16(x, rows * cap, C) : x);
    const hist: RowHistory[] = sc.prior.map(() => ({ k: [], v: [] }));
    const kc = new Float32Array(rows * cap * C).fill(NaN);
    const vc = new Float32Array(rows * cap * C).fill(NaN);
    sc.prior.forEach((n, r) => {
      for (let p = 0; p < n; p++) {
        const k = stored(rng.normals(C)),
          v = stored(rng.normals(C));
        hist[r]!.k[p] = Float64Array.from(k);
        hist[r]!.v[p] = Float64Array.from(v);
        kc.set(k, (r * cap + (p % cap)) * C);
        vc.set(v, (r * cap + (p % cap)) * C);
      }
    });
    const len = [...sc.prior];
    const rowOf: number[] = [],
      posOf: number[] = [];
    for (const [r, count] of sc.step)
      for (let i = 0; i < count; i++) {
        rowOf.push(r);
        posOf.push(len[r]!++);
      }
    const T = rowOf.length;
    const qkv = rng.normals(T * 3 * C);
    for (let t = 0; t < T; t++) {
      for (let c = 0; c < C; c++) qkv[t * 3 * C + c]! *= 2; // sharper softmax
      hist[rowOf[t]!]!.k[posOf[t]!] = Float64Array.from(stored(qkv.subarray(t * 3 * C + C, t * 3 * C + 2 * C)));
      hist[rowOf[t]!]!.v[posOf[t]!] = Float64Array.from(stored(qkv.subarray(t * 3 * C + 2 * C, t * 3 * C + 3 * C)));
    }
    const meta = new Uint32Array(2 * T);
    for (let t = 0; t < T; t++) {
      meta[2 * t] = rowOf[t]!;
      meta[2 * t + 1] = posOf[t]!;
    }

    const qkvT = upload(owned, qkv, [T, 3 * C]);
    const metaT = upload(owned, meta, [T, 2], 'u32');
    const kT = upload(owned, asCache(kc), [rows, cap, C], kvDtype);
    const vT = upload(owned, asCache(vc), [rows, cap, C], kvDtype);
    const out = poisoned(owned, [T, C]);
    const kw = await KvWriteKernel.create(ctx, kvDtype);
    const at = await kernelFor(ctx, C / nHead, variant, over, blocksScratchBytes, kvDtype);
    // blocks: poisoned scratch (NaN: a score or query read before it is written shows)
    const need = at.blocksScratch(T, cap, C, nHead);
    const scratch =
      variant === 'blocks'
        ? { scores: poisoned(owned, [need.scores]), queries: poisoned(owned, [need.queries]) }
        : undefined;
    const dispatches = at.bind(owned, {
      qkv: qkvT,
      meta: metaT,
      kCache: kT,
      vCache: vT,
      out,
      nHead,
      variant,
      writeKv,
      scratch,
    });
    if (blocksScratchBytes)
      assert.ok(
        dispatches.filter((d) => d.label.endsWith('.scores')).length > 1,
        'the scratch limit splits the tokens into chunks',
      );
    await run(ctx, [
      ...(writeKv ? [] : [kw.bind(owned, { qkv: qkvT, meta: metaT, kCache: kT, vCache: vT })]),
      ...dispatches,
    ]);
    const ref = attention64(qkv, T, C, nHead, cap, rowOf, posOf, hist);
    allClose(await download(ctx, out), ref, { rel: 1e-5, atol: 2e-5, rtol: 1e-4 }, 'attention');
    if (writeKv) {
      for (let t = 0; t < T; t++) {
        const at0 = (rowOf[t]! * cap + (posOf[t]! % cap)) * C;
        kc.set(qkv.subarray(t * 3 * C + C, t * 3 * C + 2 * C), at0);
        vc.set(qkv.subarray(t * 3 * C + 2 * C, t * 3 * C + 3 * C), at0);
      }
      for (const [what, t, want] of [
        ['k', kT, kc],
        ['v', vT, vc],
      ] as const) {
        // f16: the words, bit for bit (the kernel's rounding is round-to-nearest-even, as packF16's)
        const got = f16 ? await downloadU32(ctx, t) : await download(ctx, t);
        const exp = asCache(want);
        const bad = got.findIndex((v, i) => !Object.is(v, exp[i])); // NaN slots must stay NaN
        assert.is(bad, -1, `${what} cache after the step: element ${bad} is ${got[bad]}, expected ${exp[bad]}`);
      }
    }
  });
}

/** gpt2's head size in a decode step over 3 rows: a prompt-path case and a writeKv decode case. */
const DECODE_3_ROWS: [string, Scenario] = [
  'decode, 3 rows of lengths 5, 130, 1, nHead 12, D 64 (C 768)',
  {
    C: 768,
    nHead: 12,
    cap: 160,
    prior: [4, 129, 0],
    step: [
      [0, 1],
      [1, 1],
      [2, 1],
    ],
  },
];

export const CASES: Array<[string, Scenario]> = [
  [
    'prefill, one row, nHead 1, D 64, 100 tokens (two key blocks)',
    { C: 64, nHead: 1, cap: 128, prior: [0], step: [[0, 100]] },
  ],
  ['prefill, one row, nHead 4, D 16, 70 tokens', { C: 64, nHead: 4, cap: 80, prior: [0], step: [[0, 70]] }],
  [
    'prefill continuing a row (20 prior positions), C 48, nHead 3 (D 16)',
    { C: 48, nHead: 3, cap: 64, prior: [20], step: [[0, 9]] },
  ],
  DECODE_3_ROWS,
  [
    'multi-row prefill: two prompts in one step, interleaved order, C 48, nHead 3',
    {
      C: 48,
      nHead: 3,
      cap: 16,
      prior: [0, 0, 3],
      step: [
        [1, 5],
        [0, 7],
        [2, 2],
      ],
    },
  ],
  [
    'capacity 2048 with positions near the end, nHead 4',
    {
      C: 64,
      nHead: 4,
      cap: 2048,
      prior: [2040, 0],
      step: [
        [0, 7],
        [1, 3],
      ],
    },
  ],
  [
    'D 24 (does not divide the workgroup), C 48, nHead 2',
    {
      C: 48,
      nHead: 2,
      cap: 100,
      prior: [70, 3],
      step: [
        [0, 2],
        [1, 2],
      ],
    },
  ],
  ['D 128 (> workgroup size), C 256, nHead 2', { C: 256, nHead: 2, cap: 96, prior: [66], step: [[0, 3]] }],
  ['D 256 (the maximum), nHead 1', { C: 256, nHead: 1, cap: 80, prior: [10], step: [[0, 2]] }],
  // Past the capacity only a decode step is well defined: a later token of the same step would
  // overwrite a slot still inside an earlier token's window.
  [
    'ring window: decode past the capacity attends to the last cap positions',
    {
      C: 32,
      nHead: 2,
      cap: 16,
      prior: [20, 16],
      step: [
        [0, 1],
        [1, 1],
      ],
    },
  ],
  [
    'one row past the capacity alone in its tile (the tiled kernel must fall back)',
    { C: 32, nHead: 2, cap: 16, prior: [20], step: [[0, 1]] },
  ],
  [
    'D 3 (scalar kernel only: D % 4 != 0), C 12, nHead 4',
    {
      C: 12,
      nHead: 4,
      cap: 300,
      prior: [270, 5],
      step: [
        [0, 2],
        [1, 3],
      ],
    },
  ],
];

// Variant 'blocks' (long prompts on CPU adapters: blocks of 8 tokens of one row through a score
// scratch; blocks mixing rows or wrapping the ring go token by token in a second pass): prompts
// over several key groups (16 keys each) and blocks, rows continued from a history, blocks that
// straddle two rows, a partial last block, tokens in chunks when the scratch is limited.
export const BLOCK_CASES: Array<[string, Scenario, number?]> = [
  [
    'one row, nHead 12, D 64, 77 tokens (a partial last block)',
    { C: 768, nHead: 12, cap: 96, prior: [0], step: [[0, 77]] },
  ],
  [
    'a row continued after 37 positions, 30 tokens, nHead 2, D 64',
    { C: 128, nHead: 2, cap: 80, prior: [37], step: [[0, 30]] },
  ],
  [
    'two prompts of 13 and 20 tokens and a continued row (blocks straddle rows), D 16',
    {
      C: 64,
      nHead: 4,
      cap: 48,
      prior: [0, 0, 5],
      step: [
        [0, 13],
        [1, 20],
        [2, 11],
      ],
    },
  ],
  ['D 128 (two word groups per lane), 19 tokens', { C: 256, nHead: 2, cap: 40, prior: [3], step: [[0, 19]] }],
  [
    'chunks of 8 tokens (a scratch of 8 x 4 heads x 64 slots), 45 tokens after 6',
    { C: 256, nHead: 4, cap: 64, prior: [6], step: [[0, 45]] },
    8 * 4 * 64 * 4,
  ],
  [
    'chunks of 24 tokens over two rows, nHead 3, D 16',
    {
      C: 48,
      nHead: 3,
      cap: 64,
      prior: [0, 10],
      step: [
        [0, 30],
        [1, 25],
      ],
    },
    24 * 3 * 64 * 4 + 100,
  ],
];

// Decode steps (one token per row) with writeKv: the kernel writes the step's K/V itself.
export const DECODE_CASES: Array<[string, Scenario]> = [
  DECODE_3_ROWS,
  [
    'decode past the capacity (the ring window), 2 rows, rows given in reverse',
    {
      C: 32,
      nHead: 2,
      cap: 16,
      prior: [20, 16],
      step: [
        [1, 1],
        [0, 1],
      ],
    },
  ],
  [
    'decode, D 3 (scalar kernel: D % 4 != 0), C 12, nHead 4',
    {
      C: 12,
      nHead: 4,
      cap: 300,
      prior: [270, 5],
      step: [
        [0, 1],
        [1, 1],
      ],
    },
  ],
  [
    'decode, D 128 (> workgroup size), C 256, nHead 2, a row at position 0',
    {
      C: 256,
      nHead: 2,
      cap: 96,
      prior: [66, 0],
      step: [
        [0, 1],
        [1, 1],
      ],
    },
  ],
];
