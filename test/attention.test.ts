import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AttentionProfile, AttentionVariant, BLOCKS_MIN_T, fitTo } from '../src/kernels/attention.js';
import { KvWriteKernel } from '../src/kernels/kvcache.js';
import { deviceProfile } from '../src/kernels/profile.js';
import { InvalidOptionError, ShapeError } from '../src/errors.js';
import { allClose, download, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import type { Owned } from '../src/gpu/common.js';
import { BLOCK_CASES, CASES, check, DECODE_CASES, kernelFor, profileFor } from './attention-util.js';

// Every case runs each kernel that applies: per token (vec4 loads when D % 4 == 0, else scalar),
// one invocation per token and head (lanes: D % 4 == 0), one per pair of tokens and head
// (pairs: neighbours in a row share K/V loads, other pairs and an odd last token go one by one),
// tiled (8 tokens per workgroup; tiles that mix rows or wrap fall back per token), wide (the
// vec4 kernel with 256 threads per workgroup, GPU decode's) and subgroup (prefill_sg: blocks of
// 8 tokens of a row per 8-invocation subgroup and head, blocks that mix rows or wrap token by
// token, single tokens; D 24 leaves invocations of the
// last head word past the head).
for (const variant of ['query', 'lanes', 'pairs', 'tiled', 'wide', 'blocks', 'subgroup'] as const) {
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
  });
}

BLOCK_CASES.forEach(([name, sc, scratch], i) =>
  test(`attention (blocks): ${name}`, () => check(sc, 500 + i, 'blocks', false, {}, scratch)),
);
// The same long prompts through prefill_sg (blocks of 8 tokens of a row share each K/V load), with
// the device's subgroup size (up to 8) and 4 lanes (SwiftShader's, on 8-lane devices too).
BLOCK_CASES.forEach(([name, sc], i) => {
  test(`attention (subgroup): ${name}`, () => check(sc, 500 + i, 'subgroup'));
  test(`attention (subgroup, 4 lanes): ${name}`, () => check(sc, 500 + i, 'subgroup', false, { subgroupLanes: 4 }));
});

// Decode steps writing their own K/V, with each decode kernel: 'subgroup' is decode_sg (4
// invocations per (token, head); D 24 leaves one past the head).
for (const [variant, wg] of [
  ['query', 32],
  ['lanes', 0],
  ['wide', 64],
  ['wide', 256],
  ['subgroup', 0],
] as const) {
  DECODE_CASES.forEach(([name, sc], i) => {
    if ((variant === 'lanes' || variant === 'wide' || variant === 'subgroup') && (sc.C / sc.nHead) % 4 !== 0) return;
    const what = variant === 'wide' ? `wide ${wg}` : variant;
    const over = variant === 'wide' ? { decodeWg: wg } : variant === 'subgroup' ? { decode: 'subgroup' as const } : {};
    test(`attention (${what}, writeKv): ${name}`, () => check(sc, 300 + i, variant, true, over));
  });
}

test('attention writeKv: refused with the tiled kernel; qkv or meta sharing a buffer with a cache is refused', () =>
  withDevice(async ({ ctx, owned }) => {
    const at = await kernelFor(ctx, 64, 'tiled');
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
    // the workgroup-per-token kernel, the one-invocation one (pairs, D 8) and, where the device has
    // subgroups of 4+, prefill_sg (its block of 2 tokens mixes rows: one at a time)
    const sgOk = ctx.features.subgroups && (ctx.features.subgroupSize ?? 0) >= 4;
    const kinds: AttentionVariant[] = ['query', 'pairs', ...(sgOk ? (['subgroup'] as const) : [])];
    for (const kind of kinds) {
      const at = await kernelFor(ctx, 8, kind);
      const out = upload(owned, new Float32Array(2 * C), [2, C]); // zeros: NaN must be written
      await run(ctx, [
        kw.bind(owned, { qkv: qkvT, meta: metaT, kCache: kT, vCache: vT }),
        ...at.bind(owned, { qkv: qkvT, meta: metaT, kCache: kT, vCache: vT, out, nHead: 2 }),
      ]);
      const got = await download(ctx, out);
      // token 0 attends only to itself: out = its v
      allClose(got.subarray(0, C), qkv.subarray(2 * C, 3 * C), { atol: 1e-6 }, `single-key attention (${kind})`);
      assert.ok(
        got.subarray(C).every((v) => Number.isNaN(v)),
        `row outside the cache gives NaN (${kind})`,
      );
    }
  }));

/** Poisoned arguments of a step of T tokens over `rows` cache rows of 32 slots, width C, nHead heads. */
function argsOf(owned: Owned, T: number, C: number, nHead: number, rows = 2) {
  return {
    qkv: poisoned(owned, [T, 3 * C]),
    meta: poisoned(owned, [T, 2], 'u32'),
    kCache: poisoned(owned, [rows, 32, C]),
    vCache: poisoned(owned, [rows, 32, C]),
    out: poisoned(owned, [T, C]),
    nHead,
  };
}

test("attention 'blocks': taken for prompts of >= BLOCKS_MIN_T tokens given a scratch, its scratch sized and checked, refused where it cannot run", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number) => argsOf(owned, T, C, nHead);
    const on = await kernelFor(ctx, 16, 'blocks');
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
    const small = await kernelFor(ctx, 16, 'blocks', {}, 4 * 32 * 4 * 20);
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
      (e: Error) => e instanceof ShapeError && /head size 32 .* built for head size 16/.test(e.message),
    );
    const outInScores = { buffer: scratch.scores.buffer, offset: 0, shape: [T, 64], dtype: 'f32' as const };
    assert.throws(
      () => on.bind(owned, { ...args(T, 64, 4), out: outInScores, variant: 'blocks', scratch }),
      (e: Error) => e instanceof ShapeError && /scores scratch .* overlaps out/.test(e.message),
    );
    const gpu = await kernelFor(ctx, 16, 'tiled');
    assert.equal(gpu.blocksScratch(T, 32, 64, 4), { scores: 0, queries: 0, tc: 0 }, "prompt 'tiled': no blocks");
    // prompt 'pairs': the lanes kernels, pairs at every length, no 'blocks' built
    const noBlocks = await kernelFor(ctx, 16, 'pairs');
    assert.equal(noBlocks.blocksScratch(T, 32, 64, 4), { scores: 0, queries: 0, tc: 0 });
    assert.equal(
      noBlocks.bind(owned, { ...args(T, 64, 4), scratch })[0]!.label,
      'attention.pairs',
      'blocks off: pairs even with a scratch',
    );
    assert.throws(
      () => noBlocks.bind(owned, { ...args(T, 64, 4), scratch, variant: 'blocks' }),
      (e: Error) =>
        e instanceof ShapeError &&
        /variant 'blocks' is not built by this kernel \(decode 'lanes', prompt 'pairs'/.test(e.message),
    );
    for (const blocksScratchBytes of [0, -5, 1.5]) {
      await kernelFor(ctx, 16, 'blocks', {}, blocksScratchBytes).then(
        () => assert.unreachable(`blocksScratchBytes ${blocksScratchBytes} accepted`),
        (e: Error) =>
          assert.ok(
            e instanceof InvalidOptionError && /blocksScratchBytes must be a positive integer/.test(e.message),
            e.message,
          ),
      );
    }
  }));

test("attention prompt 'tiled' tiles prompts of >= 16 tokens with D % 4 == 0 and D <= 64, else one token per workgroup", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number) => argsOf(owned, T, C, nHead, 1);
    const at = await kernelFor(ctx, 64, 'tiled');
    assert.equal(
      at.bind(owned, args(16, 64, 1)).map((d) => d.label),
      ['attention.tiled', 'attention.rest'],
    );
    assert.equal(
      at.bind(owned, args(15, 64, 1)).map((d) => d.label),
      ['attention'],
    );
    const d128 = await kernelFor(ctx, 128, 'tiled');
    assert.is(d128.prompt, 'query', "D 128 > 64: 'tiled' falls back to 'query'");
    assert.equal(
      d128.bind(owned, args(16, 128, 1)).map((d) => d.label),
      ['attention'],
    );
    const d3 = await kernelFor(ctx, 3, 'tiled');
    assert.throws(
      () => d3.bind(owned, { ...args(16, 12, 4), variant: 'tiled' }),
      (e: Error) => e instanceof ShapeError && /variant 'tiled' is not built .* head size 3/.test(e.message),
    );
  }));

test("attention 'lanes' / 'pairs': built for the kernel's head size where the profile names them (CPU adapters), taken for decode steps / prompts", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number) => argsOf(owned, T, C, nHead);
    const on = await kernelFor(ctx, 16, 'pairs');
    assert.equal([on.headDim, on.decode, on.prompt], [16, 'lanes', 'pairs']);
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
    assert.equal(lanesOf(3).workgroups, [6, 1, 1], '2 (token, head) invocations per decode workgroup: 12 -> 6');
    assert.equal(pairsOf(3).workgroups, [1, 1, 1], '8 (token pair, head) invocations per workgroup: 2 x 4 -> 1');
    assert.equal(pairsOf(33).workgroups, [9, 1, 1], '17 pairs x 4 heads -> 9');
    assert.is.not(lanesOf(3).pipeline, pairsOf(3).pipeline);
    assert.is.not(
      lanesOf(3).pipeline,
      on.bind(owned, { ...args(5, 64, 4), variant: 'pairs' })[1]!.pipeline,
      'decode_lanes at 2 lanes for decode, at 8 after the pairs',
    );
    // the profile's choice: pairs for prompts, lanes for single tokens and writeKv (decode) steps
    assert.is(on.bind(owned, args(16, 64, 4))[0]!.pipeline, pairsOf(16).pipeline, 'prompts take pairs (not the tiles)');
    assert.is(on.bind(owned, args(2, 64, 4))[0]!.pipeline, pairsOf(2).pipeline);
    assert.is(on.bind(owned, args(1, 64, 4))[0]!.pipeline, lanesOf(1).pipeline, 'one token');
    assert.is(on.bind(owned, { ...args(2, 64, 4), writeKv: true })[0]!.pipeline, lanesOf(2).pipeline, 'decode step');
    assert.throws(
      () => on.bind(owned, { ...args(2, 64, 4), writeKv: true, variant: 'pairs' }),
      (e: Error) => e instanceof ShapeError && /not variant 'pairs'/.test(e.message),
    );
    assert.throws(
      () => on.bind(owned, { ...args(2, 64, 2), variant: 'lanes' }),
      (e: Error) =>
        e instanceof ShapeError &&
        /head size 32 \(C 64 \/ nHead 2\), but this kernel was built for head size 16/.test(e.message),
    );
    const off = await kernelFor(ctx, 16, 'query');
    assert.equal(
      off.bind(owned, args(2, 64, 4)).map((d) => d.workgroups),
      [[8, 1, 1]],
    );
    assert.throws(
      () => off.bind(owned, { ...args(2, 64, 4), variant: 'lanes' }),
      (e: Error) => e instanceof ShapeError && /variant 'lanes' is not built by this kernel/.test(e.message),
    );
    const sg = ctx.features.subgroups && (ctx.features.subgroupSize ?? 0) >= 4;
    assert.is(
      deviceProfile(ctx).attention.decode,
      !ctx.isCpuAdapter ? 'wide' : sg ? 'subgroup' : 'lanes',
      'the profile: CPU adapters decode with a subgroup per head where they have subgroups, else one invocation',
    );
    // head sizes the one-invocation kernels cannot run fall back to the workgroup kernel
    assert.equal(fitTo(profileFor(ctx, 'pairs'), 6), { decode: 'query', prompt: 'query' });
    assert.equal(fitTo(profileFor(ctx, 'pairs'), 260), { decode: 'query', prompt: 'query' });
    for (const headDim of [0, 257, 1.5]) {
      await kernelFor(ctx, headDim, 'pairs').then(
        () => assert.unreachable(`headDim ${headDim} accepted`),
        (e: Error) => assert.ok(e instanceof InvalidOptionError && e.message.includes(`got ${headDim}`), e.message),
      );
    }
  }));

test("attention 'subgroup' (prefill_sg): built where the profile names it and subgroups hold its lanes, taken for prompts of 2+ tokens, refused where it cannot run", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number) => argsOf(owned, T, C, nHead);
    const sgSize = ctx.features.subgroupSize;
    const can = ctx.features.subgroups && sgSize !== null && sgSize >= 4;
    if (!can) {
      await kernelFor(ctx, 16, 'subgroup', { subgroupLanes: 4 }).then(
        () => assert.unreachable('subgroups without subgroups accepted'),
        (e: Error) =>
          assert.ok(e instanceof InvalidOptionError && /needs the 'subgroups' feature/.test(e.message), e.message),
      );
      return;
    }
    const on = await kernelFor(ctx, 16, 'subgroup');
    assert.is(
      on.sgQueries,
      Math.min(8, sgSize!),
      'prefill_sg: as many queries per workgroup as invocations (the subgroup size, at most 8)',
    );
    const sgOf = (T: number) => on.bind(owned, { ...args(T, 64, 4), variant: 'subgroup' })[0]!;
    assert.match(sgOf(3).pipeline.label, /prefill_sg/, 'a prompt: prefill_sg');
    assert.equal(sgOf(3).workgroups, [4, 1, 1], 'a prompt: one workgroup per (block of queries, head): 1 x 4');
    assert.equal(sgOf(17).workgroups, [Math.ceil(17 / on.sgQueries) * 4, 1, 1], 'a partial last block');
    assert.is(on.bind(owned, args(2, 64, 4))[0]!.pipeline, sgOf(2).pipeline, 'a short prompt');
    assert.match(on.bind(owned, args(1, 64, 4))[0]!.pipeline.label, /decode_lanes/, 'one token: decode_lanes');
    assert.match(
      on.bind(owned, { ...args(2, 64, 4), writeKv: true })[0]!.pipeline.label,
      /decode_lanes/,
      "a decode step: the profile's decode kernel",
    );
    assert.throws(
      () => on.bind(owned, { ...args(2, 64, 4), variant: 'subgroup', writeKv: true }),
      (e: Error) => e instanceof ShapeError && /variant 'subgroup' is not built/.test(e.message),
      'writeKv through subgroups needs decode_sg',
    );
    // decode 'subgroup': decode_sg for decode steps and single tokens, one 4-invocation workgroup per (token, head)
    const dsg = await kernelFor(ctx, 16, 'subgroup', { decode: 'subgroup' });
    const step = dsg.bind(owned, { ...args(2, 64, 4), writeKv: true })[0]!;
    assert.match(step.pipeline.label, /decode_sg/, 'a decode step: decode_sg');
    assert.equal(step.workgroups, [8, 1, 1], '2 tokens x 4 heads');
    assert.match(dsg.bind(owned, args(1, 64, 4))[0]!.pipeline.label, /decode_sg/, 'one token: decode_sg');
    assert.match(dsg.bind(owned, args(3, 64, 4))[0]!.pipeline.label, /prefill_sg/, 'a prompt: prefill_sg');
    assert.is(
      on.variantFor(BLOCKS_MIN_T, { scratch: true }),
      'subgroup',
      "a long prompt, even given a 'blocks' scratch",
    );
    if (sgSize! >= 8) assert.is((await kernelFor(ctx, 16, 'subgroup', { subgroupLanes: 4 })).sgQueries, 4);
    if (sgSize! < 8)
      await kernelFor(ctx, 16, 'subgroup', { subgroupLanes: 8 }).then(
        () => assert.unreachable(`8 lanes on ${sgSize}-lane subgroups accepted`),
        (e: Error) =>
          assert.ok(e instanceof InvalidOptionError && /at least subgroupLanes 8/.test(e.message), e.message),
      );
    const off = await kernelFor(ctx, 16, 'pairs');
    assert.throws(
      () => off.bind(owned, { ...args(2, 64, 4), variant: 'subgroup' }),
      (e: Error) => e instanceof ShapeError && /variant 'subgroup' is not built/.test(e.message),
    );
    for (const [over, re] of [
      [{ subgroupLanes: 2 }, /subgroupLanes must be 4 or 8, got 2/],
      [{ subgroupLanes: 16 }, /subgroupLanes must be 4 or 8, got 16/],
      [{ decode: 'subgroups' }, /decode must be 'wide', 'lanes', 'subgroup' or 'query', got "subgroups"/],
    ] as const) {
      await kernelFor(ctx, 16, 'subgroup', over as Partial<AttentionProfile>).then(
        () => assert.unreachable(`${JSON.stringify(over)} accepted`),
        (e: Error) => assert.ok(e instanceof InvalidOptionError && re.test(e.message), e.message),
      );
    }
  }));

test("attention 'wide': the decode kernel of profiles that name it (GPUs), not for prompt steps, options checked", () =>
  withDevice(async ({ ctx, owned }) => {
    const args = (T: number, C: number, nHead: number, writeKv: boolean) => ({
      ...argsOf(owned, T, C, nHead, T),
      writeKv,
    });
    const at = await kernelFor(ctx, 16, 'wide', { decodeWg: 128 });
    const wide = at.bind(owned, { ...args(2, 64, 4, true), variant: 'wide' })[0]!;
    assert.equal(wide.workgroups, [8, 1, 1], 'one workgroup per (token, head)');
    assert.is(at.bind(owned, args(2, 64, 4, true))[0]!.pipeline, wide.pipeline, 'taken for a decode step');
    assert.is.not(at.bind(owned, args(2, 64, 4, false))[0]!.pipeline, wide.pipeline, 'not for other steps');
    const d3 = await kernelFor(ctx, 3, 'wide');
    assert.is(d3.decode, 'query', 'D % 4 != 0: the scalar workgroup kernel');
    assert.throws(
      () => d3.bind(owned, { ...args(2, 12, 4, true), variant: 'wide' }),
      (e: Error) => e instanceof ShapeError && /variant 'wide' is not built .* head size 3/.test(e.message),
    );
    assert.is(deviceProfile(ctx).attention.decode === 'wide', !ctx.isCpuAdapter, 'the profile: GPUs only');
    assert.throws(
      () => at.bind(owned, { ...args(2, 64, 4, true), variant: 'fast' as never }),
      (e: Error) => e instanceof ShapeError && /variant must be one of .* got fast/.test(e.message),
    );
    for (const decodeWg of [16, 48, 512, 1.5]) {
      await kernelFor(ctx, 16, 'wide', { decodeWg }).then(
        () => assert.unreachable(`decodeWg ${decodeWg} accepted`),
        (e: Error) => assert.ok(e instanceof InvalidOptionError && e.message.includes(`got ${decodeWg}`), e.message),
      );
    }
  }));

test('attention rejects a head count that does not divide C and mismatched caches', () =>
  withDevice(async ({ ctx, owned }) => {
    const at = await kernelFor(ctx, 16, 'query');
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
