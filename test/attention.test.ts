import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AttentionArgs, AttentionKernel, BLOCKS_MIN_T, SG_LANES } from '../src/kernels/attention.js';

type AttentionVariant = NonNullable<AttentionArgs['variant']>;
import { KvWriteKernel } from '../src/kernels/kvcache.js';
import { InvalidOptionError, ShapeError } from '../src/errors.js';
import { allClose, download, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { attention64, RowHistory } from './reference/attention.js';

interface Scenario {
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
async function check(
  sc: Scenario,
  seed: number,
  variant: AttentionVariant,
  writeKv = false,
  decodeWg = 256,
  decodeLanes?: number,
  blocksScratchBytes?: number,
): Promise<void> {
  await withDevice(async ({ ctx, owned }) => {
    const { C, nHead, cap } = sc;
    const rows = sc.prior.length;
    const rng = new Rng(seed);
    const hist: RowHistory[] = sc.prior.map(() => ({ k: [], v: [] }));
    const kc = new Float32Array(rows * cap * C).fill(NaN);
    const vc = new Float32Array(rows * cap * C).fill(NaN);
    sc.prior.forEach((n, r) => {
      for (let p = 0; p < n; p++) {
        const k = rng.normals(C),
          v = rng.normals(C);
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
      hist[rowOf[t]!]!.k[posOf[t]!] = Float64Array.from(qkv.subarray(t * 3 * C + C, t * 3 * C + 2 * C));
      hist[rowOf[t]!]!.v[posOf[t]!] = Float64Array.from(qkv.subarray(t * 3 * C + 2 * C, t * 3 * C + 3 * C));
    }
    const meta = new Uint32Array(2 * T);
    for (let t = 0; t < T; t++) {
      meta[2 * t] = rowOf[t]!;
      meta[2 * t + 1] = posOf[t]!;
    }

    const qkvT = upload(owned, qkv, [T, 3 * C]);
    const metaT = upload(owned, meta, [T, 2], 'u32');
    const kT = upload(owned, kc, [rows, cap, C]);
    const vT = upload(owned, vc, [rows, cap, C]);
    const out = poisoned(owned, [T, C]);
    const kw = await KvWriteKernel.create(ctx);
    const lanes = variant === 'lanes' || variant === 'pairs' || variant === 'blocks';
    // the lanes family without 'subgroup', which would take the place of 'blocks' by default
    const at = await AttentionKernel.create(
      ctx,
      lanes
        ? { headDim: C / nHead, lanes: true, subgroups: false, decodeLanes, blocksScratchBytes }
        : variant === 'subgroup'
          ? { headDim: C / nHead, subgroups: true }
          : { decodeWg },
    );
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
        const got = await download(ctx, t);
        const bad = got.findIndex((v, i) => !Object.is(v, want[i])); // NaN slots must stay NaN
        assert.is(bad, -1, `${what} cache after the step: element ${bad} is ${got[bad]}, expected ${want[bad]}`);
      }
    }
  });
}

const CASES: Array<[string, Scenario]> = [
  [
    'prefill, one row, nHead 1, D 64, 100 tokens (two key blocks)',
    { C: 64, nHead: 1, cap: 128, prior: [0], step: [[0, 100]] },
  ],
  ['prefill, one row, nHead 4, D 16, 70 tokens', { C: 64, nHead: 4, cap: 80, prior: [0], step: [[0, 70]] }],
  [
    'prefill continuing a row (20 prior positions), C 48, nHead 3 (D 16)',
    { C: 48, nHead: 3, cap: 64, prior: [20], step: [[0, 9]] },
  ],
  [
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
  ],
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
// Every case runs each kernel that applies: per token (vec4 loads when D % 4 == 0), per token
// scalar, one invocation per token and head (lanes: D % 4 == 0), one per pair of tokens and head
// (pairs: neighbours in a row share K/V loads, other pairs and an odd last token go one by one),
// tiled (8 tokens per workgroup; tiles that mix rows or wrap fall back per token), wide (the
// vec4 kernel with 256 threads per workgroup, GPU decode's) and subgroup (prefill_sg: blocks of
// 8 tokens of a row per 8-invocation subgroup and head, blocks that mix rows or wrap token by
// token; single tokens and decode_sg's 4-invocation subgroups; D 24 leaves invocations of the
// last head word past the head).
for (const variant of ['query', 'scalar', 'lanes', 'pairs', 'tiled', 'wide', 'blocks', 'subgroup'] as const) {
  CASES.forEach(([name, sc], i) => {
    const D = sc.C / sc.nHead;
    if (variant === 'tiled' && !(D % 4 === 0 && D <= 64)) return;
    if (
      (variant === 'lanes' ||
        variant === 'pairs' ||
        variant === 'wide' ||
        variant === 'blocks' ||
        variant === 'subgroup') &&
      D % 4 !== 0
    )
      return;
    test(`attention (${variant}): ${name}`, () => check(sc, 100 + i, variant));
    // decode_lanes at another workgroup width than the default 2 (the index arithmetic depends on
    // it; head sizes up to 64 only: llvmpipe takes 20-45 s to compile each wider one)
    if (variant === 'lanes' && D <= 64)
      test(`attention (lanes, 8 per workgroup): ${name}`, () => check(sc, 100 + i, variant, false, 256, 8));
  });
}

// Variant 'blocks' (long prompts on CPU adapters: blocks of 8 tokens of one row through a score
// scratch; blocks mixing rows or wrapping the ring go token by token in a second pass): prompts
// over several key groups (16 keys each) and blocks, rows continued from a history, blocks that
// straddle two rows, a partial last block, tokens in chunks when the scratch is limited.
const BLOCK_CASES: Array<[string, Scenario, number?]> = [
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
BLOCK_CASES.forEach(([name, sc, scratch], i) =>
  test(`attention (blocks): ${name}`, () => check(sc, 500 + i, 'blocks', false, 256, undefined, scratch)),
);
// The same long prompts through prefill_sg (blocks of 8 tokens of a row share each K/V load).
BLOCK_CASES.forEach(([name, sc], i) => test(`attention (subgroup): ${name}`, () => check(sc, 500 + i, 'subgroup')));

// Decode steps (one token per row) with writeKv: the kernel writes the step's K/V itself.
const DECODE_CASES: Array<[string, Scenario]> = [
  [
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
  ],
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
for (const [variant, wg] of [
  ['query', 32],
  ['scalar', 32],
  ['lanes', 0],
  ['lanes', 8],
  ['wide', 64],
  ['wide', 256],
  ['subgroup', 0],
] as const) {
  DECODE_CASES.forEach(([name, sc], i) => {
    if ((variant === 'lanes' || variant === 'wide' || variant === 'subgroup') && (sc.C / sc.nHead) % 4 !== 0) return;
    if (variant === 'lanes' && wg && sc.C / sc.nHead > 64) return; // as above
    // lanes: 0 = the default width (2 per workgroup), else that width
    const what = variant === 'wide' ? `wide ${wg}` : variant === 'lanes' ? `lanes ${wg || 'default'}` : variant;
    test(`attention (${what}, writeKv): ${name}`, () =>
      check(sc, 300 + i, variant, true, variant === 'lanes' ? 256 : wg, variant === 'lanes' && wg ? wg : undefined));
  });
}

test('attention writeKv: refused with the tiled kernel; qkv or meta sharing a buffer with a cache is refused', () =>
  withDevice(async ({ ctx, owned }) => {
    const at = await AttentionKernel.create(ctx);
    const args = {
      qkv: poisoned(owned, [2, 192]),
      meta: poisoned(owned, [2, 2], 'u32'),
      kCache: poisoned(owned, [2, 8, 64]),
      vCache: poisoned(owned, [2, 8, 64]),
      out: poisoned(owned, [2, 64]),
      nHead: 1,
    };
    assert.equal(at.bind(owned, { ...args, writeKv: true }).length, 1);
    assert.throws(
      () => at.bind(owned, { ...args, writeKv: true, variant: 'tiled' }),
      (e: Error) => e instanceof ShapeError && /writeKv .* not variant 'tiled'/.test(e.message),
    );
    const shared = poisoned(owned, [2 * 8 * 64 + 2 * 192]);
    const kIn = { buffer: shared.buffer, offset: 0, shape: [2, 8, 64], dtype: 'f32' as const };
    const qIn = { buffer: shared.buffer, offset: 2 * 8 * 64 * 4, shape: [2, 192], dtype: 'f32' as const };
    assert.throws(
      () => at.bind(owned, { ...args, kCache: kIn, qkv: qIn }),
      (e: Error) => e instanceof ShapeError && /qkv and kCache share buffer/.test(e.message),
    );
    assert.throws(
      () => at.bind(owned, { ...args, vCache: args.kCache }),
      (e: Error) => e instanceof ShapeError && /vCache .* overlaps kCache/.test(e.message),
    );
  }));

test('attention: a token whose row is outside the cache gets NaN, the others are unaffected', () =>
  withDevice(async ({ ctx, owned }) => {
    const C = 16,
      cap = 8,
      rows = 2;
    const rng = new Rng(5);
    const qkv = rng.normals(2 * 3 * C);
    const meta = Uint32Array.from([0, 0, 7, 0]); // token 1 claims row 7 of 2
    const kT = upload(owned, new Float32Array(rows * cap * C).fill(NaN), [rows, cap, C]);
    const vT = upload(owned, new Float32Array(rows * cap * C).fill(NaN), [rows, cap, C]);
    const qkvT = upload(owned, qkv, [2, 3 * C]);
    const metaT = upload(owned, meta, [2, 2], 'u32');
    const kw = await KvWriteKernel.create(ctx);
    // the workgroup-per-token kernel, the one-invocation one (lanes: pairs, D 8) and, where the
    // device has subgroups of 4+, prefill_sg (its block of 2 tokens mixes rows: one at a time)
    const sgOk = ctx.features.subgroups && (ctx.features.subgroupSize ?? 0) >= SG_LANES;
    const kernels = [
      await AttentionKernel.create(ctx),
      await AttentionKernel.create(ctx, { headDim: 8, lanes: true, subgroups: false }),
    ];
    if (sgOk) kernels.push(await AttentionKernel.create(ctx, { headDim: 8, subgroups: true }));
    for (const at of kernels) {
      const out = upload(owned, new Float32Array(2 * C), [2, C]); // zeros: NaN must be written
      await run(ctx, [
        kw.bind(owned, { qkv: qkvT, meta: metaT, kCache: kT, vCache: vT }),
        ...at.bind(owned, { qkv: qkvT, meta: metaT, kCache: kT, vCache: vT, out, nHead: 2 }),
      ]);
      const got = await download(ctx, out);
      const what = `lanes ${at.lanesHeadDim}, subgroup ${at.subgroupHeadDim}`;
      // token 0 attends only to itself: out = its v
      allClose(got.subarray(0, C), qkv.subarray(2 * C, 3 * C), { atol: 1e-6 }, `single-key attention (${what})`);
      assert.ok(
        got.subarray(C).every((v) => Number.isNaN(v)),
        `row outside the cache gives NaN (${what})`,
      );
    }
  }));

test("attention 'blocks': chosen by 'auto' for prompts of >= BLOCKS_MIN_T tokens given a scratch, its scratch sized and checked, refused where it cannot run", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number) => ({
      qkv: poisoned(owned, [T, 3 * C]),
      meta: poisoned(owned, [T, 2], 'u32'),
      kCache: poisoned(owned, [2, 32, C]),
      vCache: poisoned(owned, [2, 32, C]),
      out: poisoned(owned, [T, C]),
      nHead,
    });
    // subgroups: false: where 'subgroup' is built, 'auto' takes it for prompts and 'blocks' is not built by default
    const on = await AttentionKernel.create(ctx, { headDim: 16, lanes: true, subgroups: false });
    const T = BLOCKS_MIN_T;
    // scores [n_head 4, cap 32, tc], queries [C 64, tc]: tc = T rounded up to 8 while it fits 64 MiB
    assert.equal(on.blocksScratch(T, 32, 64, 4), { scores: 4 * 32 * T, queries: 64 * T, tc: T });
    assert.equal(
      on.blocksScratch(13, 32, 64, 4),
      { scores: 4 * 32 * 16, queries: 64 * 16, tc: 16 },
      'whole blocks of 8 tokens',
    );
    assert.equal(
      on.blocksScratch(T, 32, 64, 2),
      { scores: 0, queries: 0, tc: 0 },
      'D 32: not the head size it was built for',
    );
    const small = await AttentionKernel.create(ctx, {
      headDim: 16,
      lanes: true,
      subgroups: false,
      blocksScratchBytes: 4 * 32 * 4 * 20,
    });
    assert.equal(small.blocksScratch(T, 32, 64, 4).tc, 16, 'a 20-token budget: chunks of 16');
    const scratchOf = (n: { scores: number; queries: number }) => ({
      scores: poisoned(owned, [n.scores]),
      queries: poisoned(owned, [n.queries]),
    });
    const chunked = small
      .bind(owned, { ...args(T, 64, 4), scratch: scratchOf(small.blocksScratch(T, 32, 64, 4)) })
      .map((d) => d.label);
    assert.equal(
      chunked,
      [
        ...Array(T / 16)
          .fill(['attention.qt', 'attention.scores', 'attention.softmax', 'attention.pv'])
          .flat(),
        'attention.rest',
      ],
      'per chunk: q transposed, scores, softmax, P V; then decode_lanes for blocks that do not qualify',
    );
    const scratch = scratchOf(on.blocksScratch(T, 32, 64, 4));
    assert.equal(
      on.bind(owned, { ...args(T, 64, 4), scratch }).map((d) => [d.label, d.workgroups]),
      [
        ['attention.qt', [(T * 4) / 8, 1, 1]], // (head, token), 8 per workgroup
        ['attention.scores', [(T / 64) * 4, 1, 1]], // (8 blocks of 8 tokens, head)
        ['attention.softmax', [(T * 4) / 8, 1, 1]], // (head, token), 8 per workgroup
        ['attention.pv', [(T / 8) * 4, 1, 1]], // (block, head)
        ['attention.rest', [(T * 4) / 8, 1, 1]],
      ],
    );
    assert.equal(
      on.bind(owned, { ...args(T - 1, 64, 4), scratch })[0]!.label,
      'attention.pairs',
      'shorter prompts: pairs',
    );
    assert.equal(on.bind(owned, args(T, 64, 4))[0]!.label, 'attention.pairs', 'no scratch: pairs');
    assert.equal(
      on.bind(owned, { ...args(T, 64, 4), scratch, writeKv: true })[0]!.label,
      'attention',
      'decode steps: lanes',
    );
    const need = `\\(blocksScratch\\(${T}, 32, 64, 4\\): 8192 and 4096 f32\\)`;
    assert.throws(
      () => on.bind(owned, { ...args(T, 64, 4), variant: 'blocks' }),
      (e: Error) =>
        e instanceof ShapeError &&
        new RegExp(`needs scratch buffers for the scores and the queries ${need}`).test(e.message),
    );
    assert.throws(
      () =>
        on.bind(owned, {
          ...args(T, 64, 4),
          variant: 'blocks',
          scratch: { ...scratch, scores: poisoned(owned, [100]) },
        }),
      (e: Error) =>
        e instanceof ShapeError &&
        /the scores scratch holds 100 f32, variant 'blocks' needs 8192 f32 for 64 tokens/.test(e.message),
    );
    assert.throws(
      () =>
        on.bind(owned, {
          ...args(T, 64, 4),
          variant: 'blocks',
          scratch: { ...scratch, queries: poisoned(owned, [4095]) },
        }),
      (e: Error) =>
        e instanceof ShapeError &&
        /the queries scratch holds 4095 f32, variant 'blocks' needs 4096 f32/.test(e.message),
    );
    assert.throws(
      () => on.bind(owned, { ...args(T, 64, 4), variant: 'blocks', scratch: { ...scratch, queries: scratch.scores } }),
      (e: Error) => e instanceof ShapeError && /scores scratch .* overlaps queries/.test(e.message),
    );
    assert.throws(
      () => on.bind(owned, { ...args(T, 64, 4), variant: 'blocks', scratch, writeKv: true }),
      (e: Error) => e instanceof ShapeError && /not variant 'blocks'/.test(e.message),
    );
    assert.throws(
      () => on.bind(owned, { ...args(T, 64, 2), variant: 'blocks', scratch }),
      (e: Error) => e instanceof ShapeError && /variant 'blocks' runs head size 16 only, got D = 32/.test(e.message),
    );
    const outInScores = { buffer: scratch.scores.buffer, offset: 0, shape: [T, 64], dtype: 'f32' as const };
    assert.throws(
      () => on.bind(owned, { ...args(T, 64, 4), out: outInScores, variant: 'blocks', scratch }),
      (e: Error) => e instanceof ShapeError && /scores scratch .* overlaps out/.test(e.message),
    );
    const gpu = await AttentionKernel.create(ctx, { headDim: 16, lanes: false });
    assert.equal(
      gpu.blocksScratch(T, 32, 64, 4),
      { scores: 0, queries: 0, tc: 0 },
      'no lanes kernels (GPUs): no blocks',
    );
    // blocks: false keeps the lanes kernels, prompts take pairs at every length
    const noBlocks = await AttentionKernel.create(ctx, { headDim: 16, lanes: true, subgroups: false, blocks: false });
    assert.equal(noBlocks.blocksScratch(T, 32, 64, 4), { scores: 0, queries: 0, tc: 0 });
    assert.equal(
      noBlocks.bind(owned, { ...args(T, 64, 4), scratch })[0]!.label,
      'attention.pairs',
      'blocks off: pairs even with a scratch',
    );
    assert.throws(
      () => noBlocks.bind(owned, { ...args(T, 64, 4), scratch, variant: 'blocks' }),
      (e: Error) => e instanceof ShapeError && /created with blocks: false/.test(e.message),
    );
    for (const bad of [
      { lanes: false, blocks: true },
      { lanes: true, blocks: 'yes' as unknown as boolean },
    ]) {
      await AttentionKernel.create(ctx, { headDim: 16, ...bad }).then(
        () => assert.unreachable(`${JSON.stringify(bad)} accepted`),
        (e: Error) =>
          assert.ok(
            e instanceof InvalidOptionError &&
              /blocks: true needs the lanes kernels|blocks must be a boolean, got yes/.test(e.message),
            e.message,
          ),
      );
    }
    for (const blocksScratchBytes of [0, -5, 1.5]) {
      await AttentionKernel.create(ctx, { headDim: 16, lanes: true, blocksScratchBytes }).then(
        () => assert.unreachable(`blocksScratchBytes ${blocksScratchBytes} accepted`),
        (e: Error) =>
          assert.ok(
            e instanceof InvalidOptionError && /blocksScratchBytes must be a positive integer/.test(e.message),
            e.message,
          ),
      );
    }
  }));

test("attention 'auto' tiles prompts of >= 16 tokens with D % 4 == 0 and D <= 64, else one token per workgroup", () =>
  withDevice(async ({ ctx, owned }) => {
    const at = await AttentionKernel.create(ctx);
    const args = (T: number, C: number, nHead: number) => ({
      qkv: poisoned(owned, [T, 3 * C]),
      meta: poisoned(owned, [T, 2], 'u32'),
      kCache: poisoned(owned, [1, 32, C]),
      vCache: poisoned(owned, [1, 32, C]),
      out: poisoned(owned, [T, C]),
      nHead,
    });
    assert.equal(
      at.bind(owned, args(16, 64, 1)).map((d) => d.label),
      ['attention.tiled', 'attention.rest'],
    );
    assert.equal(
      at.bind(owned, args(15, 64, 1)).map((d) => d.label),
      ['attention'],
    );
    assert.equal(
      at.bind(owned, args(16, 128, 1)).map((d) => d.label),
      ['attention'],
    ); // D 128 > 64
    assert.throws(
      () => at.bind(owned, { ...args(16, 12, 4), variant: 'tiled' }),
      (e: Error) => e instanceof ShapeError && /D = 3/.test(e.message),
    );
  }));

test("attention 'lanes' / 'pairs': built for one head size (by default on CPU adapters), chosen by 'auto' for it, refused for others", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number) => ({
      qkv: poisoned(owned, [T, 3 * C]),
      meta: poisoned(owned, [T, 2], 'u32'),
      kCache: poisoned(owned, [2, 32, C]),
      vCache: poisoned(owned, [2, 32, C]),
      out: poisoned(owned, [T, C]),
      nHead,
    });
    // subgroups: false, so that 'auto' takes 'lanes' and 'pairs' (see the 'subgroup' test)
    const on = await AttentionKernel.create(ctx, { headDim: 16, lanes: true, subgroups: false });
    assert.is(on.lanesHeadDim, 16);
    const lanesOf = (T: number) => on.bind(owned, { ...args(T, 64, 4), variant: 'lanes' })[0]!;
    const pairsOf = (T: number) => on.bind(owned, { ...args(T, 64, 4), variant: 'pairs' })[0]!;
    assert.equal(
      on.bind(owned, { ...args(5, 64, 4), variant: 'pairs' }).map((d) => [d.label, d.workgroups]),
      [
        ['attention.pairs', [2, 1, 1]],
        ['attention.rest', [3, 1, 1]],
      ],
      'pairs, then decode_lanes (8 per workgroup) for the tokens of pairs that cannot share',
    );
    assert.equal(
      lanesOf(3).workgroups,
      [6, 1, 1],
      '2 (token, head) invocations per decode_lanes workgroup by default: 12 -> 6',
    );
    assert.is(on.decodeLanes, 2);
    const wide8 = await AttentionKernel.create(ctx, { headDim: 16, lanes: true, decodeLanes: 8 });
    assert.equal(
      wide8.bind(owned, { ...args(3, 64, 4), variant: 'lanes' })[0]!.workgroups,
      [2, 1, 1],
      'decodeLanes 8: 12 -> 2',
    );
    for (const decodeLanes of [0, 3, 128, 1.5]) {
      await AttentionKernel.create(ctx, { headDim: 16, lanes: true, decodeLanes }).then(
        () => assert.unreachable(`decodeLanes ${decodeLanes} accepted`),
        (e: Error) =>
          assert.ok(
            e instanceof InvalidOptionError && /decodeLanes must be a power of two in \[1, 64\].*got/.test(e.message),
            e.message,
          ),
      );
    }
    assert.equal(pairsOf(3).workgroups, [1, 1, 1], '8 (token pair, head) invocations per workgroup: 2 x 4 -> 1');
    assert.equal(pairsOf(33).workgroups, [9, 1, 1], '17 pairs x 4 heads -> 9');
    assert.is.not(lanesOf(3).pipeline, pairsOf(3).pipeline);
    // 'auto': pairs for prompts, lanes for single tokens and writeKv (decode) steps
    assert.is(on.bind(owned, args(16, 64, 4))[0]!.pipeline, pairsOf(16).pipeline, 'prompts take pairs (not the tiles)');
    assert.is(on.bind(owned, args(2, 64, 4))[0]!.pipeline, pairsOf(2).pipeline);
    assert.is(on.bind(owned, args(1, 64, 4))[0]!.pipeline, lanesOf(1).pipeline, 'one token');
    assert.is(on.bind(owned, { ...args(2, 64, 4), writeKv: true })[0]!.pipeline, lanesOf(2).pipeline, 'decode step');
    assert.throws(
      () => on.bind(owned, { ...args(2, 64, 4), writeKv: true, variant: 'pairs' }),
      (e: Error) => e instanceof ShapeError && /not variant 'pairs'/.test(e.message),
    );
    assert.equal(
      on.bind(owned, args(2, 64, 2)).map((d) => d.workgroups),
      [[4, 1, 1]],
      'D 32: the workgroup kernel, one per pair',
    );
    assert.throws(
      () => on.bind(owned, { ...args(2, 64, 2), variant: 'lanes' }),
      (e: Error) => e instanceof ShapeError && /variant 'lanes' runs head size 16 only, got D = 32/.test(e.message),
    );
    assert.throws(
      () => on.bind(owned, { ...args(2, 64, 2), variant: 'pairs' }),
      (e: Error) => e instanceof ShapeError && /variant 'pairs' runs head size 16 only, got D = 32/.test(e.message),
    );
    const off = await AttentionKernel.create(ctx, { headDim: 16, lanes: false });
    assert.is(off.lanesHeadDim, undefined);
    assert.equal(
      off.bind(owned, args(2, 64, 4)).map((d) => d.workgroups),
      [[8, 1, 1]],
    );
    assert.throws(
      () => off.bind(owned, { ...args(2, 64, 4), variant: 'lanes' }),
      (e: Error) => e instanceof ShapeError && /created without headDim/.test(e.message),
    );
    assert.is(
      (await AttentionKernel.create(ctx, { headDim: 64 })).lanesHeadDim,
      ctx.isCpuAdapter ? 64 : undefined,
      'default: CPU adapters',
    );
    assert.is(
      (await AttentionKernel.create(ctx, { headDim: 6 })).lanesHeadDim,
      undefined,
      'default: only head sizes it runs',
    );
    await AttentionKernel.create(ctx, { lanes: true }).then(
      () => assert.unreachable('lanes without headDim accepted'),
      (e: Error) => assert.ok(e instanceof InvalidOptionError && /got undefined/.test(e.message), e.message),
    );
    for (const headDim of [6, 0, 260]) {
      await AttentionKernel.create(ctx, { headDim, lanes: true }).then(
        () => assert.unreachable(`headDim ${headDim} accepted`),
        (e: Error) => assert.ok(e instanceof InvalidOptionError && e.message.includes(`got ${headDim}`), e.message),
      );
    }
  }));

test("attention 'subgroup': built by default beside the lanes kernels where subgroups hold 4+ invocations (then without 'blocks'), chosen by 'auto' for every step, refused where it cannot run", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number) => ({
      qkv: poisoned(owned, [T, 3 * C]),
      meta: poisoned(owned, [T, 2], 'u32'),
      kCache: poisoned(owned, [2, 32, C]),
      vCache: poisoned(owned, [2, 32, C]),
      out: poisoned(owned, [T, C]),
      nHead,
    });
    const sgSize = ctx.features.subgroupSize;
    const can = ctx.features.subgroups && sgSize !== null && sgSize >= SG_LANES;
    const byDefault = await AttentionKernel.create(ctx, { headDim: 16 });
    assert.is(
      byDefault.subgroupHeadDim,
      ctx.isCpuAdapter && can ? 16 : undefined,
      'default: CPU adapters with subgroups of 4+ invocations',
    );
    assert.is(
      (await AttentionKernel.create(ctx, { headDim: 16, lanes: false })).subgroupHeadDim,
      undefined,
      'not without the lanes kernels by default',
    );
    if (!can) {
      await AttentionKernel.create(ctx, { headDim: 16, subgroups: true }).then(
        () => assert.unreachable('subgroups without subgroups accepted'),
        (e: Error) =>
          assert.ok(
            e instanceof InvalidOptionError && /subgroups needs the 'subgroups' feature/.test(e.message),
            e.message,
          ),
      );
      return;
    }
    const on = await AttentionKernel.create(ctx, { headDim: 16, subgroups: true });
    assert.is(on.subgroupHeadDim, 16);
    assert.is(
      on.sgQueries,
      Math.min(8, sgSize!),
      'prefill_sg: as many queries per workgroup as invocations (the subgroup size, at most 8)',
    );
    const sgOf = (T: number, writeKv = false) =>
      on.bind(owned, { ...args(T, 64, 4), variant: 'subgroup', writeKv })[0]!;
    assert.equal(sgOf(3, true).workgroups, [12, 1, 1], 'decode: one workgroup per (token, head): 3 x 4');
    assert.match(sgOf(3, true).pipeline.label, /decode_sg/);
    assert.match(sgOf(1).pipeline.label, /decode_sg/, 'one token: decode_sg');
    assert.match(sgOf(3).pipeline.label, /prefill_sg/, 'a prompt: prefill_sg');
    assert.equal(sgOf(3).workgroups, [4, 1, 1], 'a prompt: one workgroup per (block of queries, head): 1 x 4');
    assert.equal(sgOf(17).workgroups, [Math.ceil(17 / on.sgQueries) * 4, 1, 1], 'a partial last block');
    assert.is(on.oneQueryVariant(16), 'subgroup');
    assert.is(on.bind(owned, args(1, 64, 4))[0]!.pipeline, sgOf(1).pipeline, 'auto: one token');
    assert.is(
      on.bind(owned, { ...args(2, 64, 4), writeKv: true })[0]!.pipeline,
      sgOf(2, true).pipeline,
      'auto: a decode step',
    );
    assert.is(on.bind(owned, args(2, 64, 4))[0]!.pipeline, sgOf(2).pipeline, 'auto: a short prompt');
    assert.is(
      on.resolveVariant(BLOCKS_MIN_T, 16, { scratch: true }),
      'subgroup',
      "auto: a long prompt, even given a 'blocks' scratch",
    );
    if (ctx.isCpuAdapter) {
      assert.equal(
        byDefault.blocksScratch(BLOCKS_MIN_T, 32, 64, 4),
        { scores: 0, queries: 0, tc: 0 },
        "no 'blocks' by default beside 'subgroup'",
      );
      const both = await AttentionKernel.create(ctx, { headDim: 16, subgroups: true, blocks: true });
      assert.is(
        both.resolveVariant(BLOCKS_MIN_T, 16, { variant: 'blocks', scratch: true }),
        'blocks',
        "'blocks' when asked for",
      );
    }
    assert.is(on.oneQueryVariant(32), ctx.isCpuAdapter ? 'query' : 'wide', 'another head size: not subgroup');
    assert.throws(
      () => on.bind(owned, { ...args(2, 64, 2), variant: 'subgroup' }),
      (e: Error) => e instanceof ShapeError && /variant 'subgroup' runs head size 16 only, got D = 32/.test(e.message),
    );
    const off = await AttentionKernel.create(ctx, { headDim: 16, subgroups: false });
    assert.is(off.subgroupHeadDim, undefined);
    assert.is.not(off.oneQueryVariant(16), 'subgroup');
    assert.throws(
      () => off.bind(owned, { ...args(2, 64, 4), variant: 'subgroup' }),
      (e: Error) => e instanceof ShapeError && /created without subgroups/.test(e.message),
    );
    for (const bad of [
      { headDim: 16, subgroups: 'yes' as unknown as boolean },
      { headDim: 6, subgroups: true },
      { subgroups: true },
    ]) {
      await AttentionKernel.create(ctx, bad).then(
        () => assert.unreachable(`${JSON.stringify(bad)} accepted`),
        (e: Error) =>
          assert.ok(
            e instanceof InvalidOptionError &&
              /subgroups must be a boolean, got yes|subgroups needs .* headDim (6|undefined)/.test(e.message),
            e.message,
          ),
      );
    }
  }));

test("attention 'wide': built with decodeWg (by default on GPUs), chosen by 'auto' for decode steps only, options checked", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number, writeKv: boolean) => ({
      qkv: poisoned(owned, [T, 3 * C]),
      meta: poisoned(owned, [T, 2], 'u32'),
      writeKv,
      kCache: poisoned(owned, [T, 32, C]),
      vCache: poisoned(owned, [T, 32, C]),
      out: poisoned(owned, [T, C]),
      nHead,
    });
    const at = await AttentionKernel.create(ctx, { decodeWg: 128 });
    assert.is(at.decodeWg, 128);
    const wide = at.bind(owned, { ...args(2, 64, 4, true), variant: 'wide' })[0]!;
    assert.equal(wide.workgroups, [8, 1, 1], 'one workgroup per (token, head)');
    assert.is(at.bind(owned, args(2, 64, 4, true))[0]!.pipeline, wide.pipeline, "'auto' takes it for a decode step");
    assert.is.not(at.bind(owned, args(2, 64, 4, false))[0]!.pipeline, wide.pipeline, 'not for other steps');
    assert.is.not(at.bind(owned, args(2, 12, 4, true))[0]!.pipeline, wide.pipeline, 'nor for D % 4 != 0');
    assert.throws(
      () => at.bind(owned, { ...args(2, 12, 4, true), variant: 'wide' }),
      (e: Error) => e instanceof ShapeError && /D % 4 == 0, got D = 3/.test(e.message),
    );
    const none = await AttentionKernel.create(ctx, { decodeWg: 0 });
    assert.is(none.decodeWg, undefined);
    assert.throws(
      () => none.bind(owned, { ...args(2, 64, 4, true), variant: 'wide' }),
      (e: Error) => e instanceof ShapeError && /created with decodeWg/.test(e.message),
    );
    assert.is((await AttentionKernel.create(ctx)).decodeWg, ctx.isCpuAdapter ? undefined : 256, 'default: GPUs only');
    assert.throws(
      () => at.bind(owned, { ...args(2, 64, 4, true), variant: 'fast' as never }),
      (e: Error) => e instanceof ShapeError && /variant must be one of .* got fast/.test(e.message),
    );
    for (const decodeWg of [16, 48, 512, 1.5]) {
      await AttentionKernel.create(ctx, { decodeWg }).then(
        () => assert.unreachable(`decodeWg ${decodeWg} accepted`),
        (e: Error) => assert.ok(e instanceof InvalidOptionError && e.message.includes(`got ${decodeWg}`), e.message),
      );
    }
  }));

test('attention rejects a head count that does not divide C and mismatched caches', () =>
  withDevice(async ({ ctx, owned }) => {
    const at = await AttentionKernel.create(ctx);
    const args = {
      qkv: poisoned(owned, [3, 144]),
      meta: poisoned(owned, [3, 2], 'u32'),
      kCache: poisoned(owned, [2, 8, 48]),
      vCache: poisoned(owned, [2, 8, 48]),
      out: poisoned(owned, [3, 48]),
    };
    assert.throws(
      () => at.bind(owned, { ...args, nHead: 5 }),
      (e: Error) => e instanceof ShapeError && /divisor of C = 48, got 5/.test(e.message),
    );
    assert.throws(
      () => at.bind(owned, { ...args, vCache: poisoned(owned, [2, 9, 48]), nHead: 3 }),
      (e: Error) => e instanceof ShapeError && /expected shape \[2, 8, 48\], got \[2, 9, 48\]/.test(e.message),
    );
  }));

test.run();
