// The GPU sampler beyond the exercise: Philox known answers, the draw against a float64 Gumbel-max
// reference, determinism and per-row seeds, penalties / bias / min-p / ties against float64,
// counts, step counters and the EOS latch, option validation.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Owned, GpuTensor } from '../src/gpu/common.js';
import { InvalidOptionError } from '../src/errors.js';
import { deriveSeed, NormalizedSampling, SamplingOptions, validateSampling } from '../src/sampling/options.js';
import { Sampler, SamplerState } from '../src/kernels/sampler.js';
import './kernels/test-shaders.js';
import { processLogits, sample } from '../src/sampling/sample.js';
import { allClose, download, downloadU32, poisoned, Rng, run, upload, withDevice } from './helpers.js';
import { bans64, distribution64, gumbelDraw64, philox4x32, processLogits64 } from './reference/sampling.js';
import { BanTracker, bannedNext, staticBans } from '../src/sampling/bans.js';

const u32 = (owned: Owned, n: number): GpuTensor => poisoned(owned, [n], 'u32');

test('Philox4x32-10 on the GPU matches the Random123 known answers and the CPU reference', () =>
  withDevice(async ({ ctx, owned }) => {
    // Random123 kat_vectors: philox4x32 10 rounds.
    const kat: Array<[number[], number[], number[]]> = [
      [
        [0, 0, 0, 0],
        [0, 0],
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
      ],
      [
        [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
        [0xffffffff, 0xffffffff],
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
      ],
      [
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
      ],
    ];
    const rng = new Rng(7);
    const cases = [
      ...kat.map(([c, k]) => [c, k]),
      ...Array.from({ length: 61 }, () => [
        [0, 0, 0, 0].map(() => Math.floor(rng.next() * 2 ** 32)),
        [0, 0].map(() => Math.floor(rng.next() * 2 ** 32)),
      ]),
    ];
    const words = new Uint32Array(cases.length * 10).fill(0xdeadbeef);
    cases.forEach(([c, k], i) => words.set([...c!, ...k!], i * 10));
    const aux = upload(owned, words, [words.length], 'u32');
    const g = owned.uniform('kat', [0, 8, 0, 0, 0, cases.length, 1, 0]);
    const pipe = await ctx.pipeline('sampling+sampling_test', 'philox_kat'); // test/shaders/sampling_test.wgsl
    const bindGroup = ctx.device.createBindGroup({
      layout: pipe.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: g },
        { binding: 10, resource: { buffer: aux.buffer } },
      ],
    });
    await run(ctx, [
      { family: 'sampling', label: 'kat', pipeline: pipe, bindGroup, workgroups: [Math.ceil(cases.length / 64), 1, 1] },
    ]);
    const out = await downloadU32(ctx, aux);
    kat.forEach(([, , want], i) => assert.equal(Array.from(out.subarray(i * 10 + 6, i * 10 + 10)), want, `KAT ${i}`));
    cases.forEach(([c, k], i) =>
      assert.equal(Array.from(out.subarray(i * 10 + 6, i * 10 + 10)), philox4x32(c!, k!), `case ${i}`),
    );
  }));

/** Runs `steps` sampler steps on fixed logits [rows, V]; returns the ids of each step. */
async function steps(
  ctx: Parameters<Parameters<typeof withDevice>[0]>[0]['ctx'],
  owned: Owned,
  sampler: Sampler,
  state: SamplerState,
  logits: GpuTensor,
  n: number,
): Promise<number[][]> {
  const out: number[][] = [];
  for (let s = 0; s < n; s++) {
    const ids = u32(owned, state.rows);
    await run(ctx, sampler.bind(owned, state, { logits, outIds: ids }));
    out.push(Array.from(await downloadU32(ctx, ids)));
  }
  return out;
}

test('each draw is the float64 Gumbel-max of Philox noise over the kept tokens; rows use their own seeds', () =>
  withDevice(async ({ ctx, owned }) => {
    const V = 700;
    const rows = 3;
    const rng = new Rng(21);
    const logits = rng.normals(rows * V, 2);
    const sampler = await Sampler.create(ctx, V);
    const opts = [
      validateSampling({}, V),
      validateSampling({ topK: 50, temperature: 0.8 }, V),
      validateSampling({ topP: 0.9, minP: 0.05 }, V),
    ];
    const seeds = [0, 1, 2].map((i) => deriveSeed(123456789012, i));
    const state = sampler.createState(owned, rows, opts, { seeds, eosId: -1, stopAtEos: false });
    const got = await steps(ctx, owned, sampler, state, upload(owned, logits, [rows, V]), 6);
    let checked = 0;
    for (let r = 0; r < rows; r++) {
      const z = processLogits64(logits.subarray(r * V, (r + 1) * V), opts[r]!);
      const { kept } = distribution64(z, opts[r]!);
      for (let s = 0; s < 6; s++) {
        const ref = gumbelDraw64(z, kept, seeds[r]!, s);
        if (ref.gap < 1e-4) continue; // too close for f32
        assert.is(got[s]![r], ref.id, `row ${r} step ${s}`);
        checked++;
      }
    }
    assert.ok(checked >= 15, `only ${checked} draws were decisive`);
  }));

test('determinism: same seed -> same tokens; other seeds differ; batch row i == single run with deriveSeed(s, i)', () =>
  withDevice(async ({ ctx, owned }) => {
    const V = 300;
    const logits = new Rng(5).normals(V, 0.5);
    const sampler = await Sampler.create(ctx, V);
    const o = validateSampling({ temperature: 1.5 }, V);
    const tokensOf = async (rows: number, seeds: number[]) => {
      const st = sampler.createState(owned, rows, o, { seeds, eosId: -1, stopAtEos: false });
      const lg = upload(
        owned,
        new Float32Array(rows * V).map((_, i) => logits[i % V]!),
        [rows, V],
      );
      return steps(ctx, owned, sampler, st, lg, 8);
    };
    const batch = await tokensOf(
      3,
      [0, 1, 2].map((i) => deriveSeed(42, i)),
    );
    const single0 = await tokensOf(1, [42]);
    const single2 = await tokensOf(1, [deriveSeed(42, 2)]);
    const again = await tokensOf(1, [42]);
    const col = (t: number[][], r: number) => t.map((s) => s[r]);
    assert.equal(col(single0, 0), col(again, 0));
    assert.equal(col(batch, 0), col(single0, 0));
    assert.equal(col(batch, 2), col(single2, 0));
    assert.not.equal(col(batch, 0), col(batch, 1));
    assert.not.equal(col(batch, 1), col(batch, 2));
  }));

test('deriveSeed: documented formula, identity at 0, stays in [0, 2^53)', () => {
  assert.is(deriveSeed(77, 0), 77);
  assert.is(deriveSeed(77, 3), Number((77n + 3n * 0x9e3779b97f4a7n) % 2n ** 53n));
  const big = deriveSeed(2 ** 53 - 1, 5);
  assert.ok(big >= 0 && big < 2 ** 53 && Number.isInteger(big));
});

/** GPU probsOut of one select+draw over `rows` logits rows with per-row options. */
async function gpuProbs(
  ctx: Parameters<Parameters<typeof withDevice>[0]>[0]['ctx'],
  owned: Owned,
  logits: Float32Array,
  V: number,
  opts: NormalizedSampling[],
  prompts: number[][] = [],
) {
  const rows = opts.length;
  const sampler = await Sampler.create(ctx, V);
  const state = sampler.createState(owned, rows, opts, { seeds: opts.map((_, i) => i), eosId: -1, stopAtEos: false });
  prompts.forEach((p, r) => sampler.addCounts(state, r, p));
  const probs = poisoned(owned, [rows, V]);
  const ids = u32(owned, rows);
  await run(
    ctx,
    sampler.bind(owned, state, { logits: upload(owned, logits, [rows, V]), outIds: ids, probsOut: probs }),
  );
  return {
    probs: await download(ctx, probs),
    ids: await downloadU32(ctx, ids),
    z: await download(ctx, state.work),
    state,
  };
}

test('penalties, logit bias, top-k / top-p / min-p / min_tokens_to_keep against float64', () =>
  withDevice(async ({ ctx, owned }) => {
    const V = 2000;
    const rng = new Rng(31);
    const cases: SamplingOptions[] = [
      { repetitionPenalty: 1.7 },
      { presencePenalty: 1.5, freqPenalty: 0.4, temperature: 0.6 },
      { logitBias: { 3: 5, 1999: -2.5, 10: 12 }, repetitionPenalty: 0.8 },
      { minP: 0.1 },
      { minP: 0.9, minTokensToKeep: 7 },
      { topK: 5, minTokensToKeep: 9 },
      { topP: 0.3, minTokensToKeep: 40 },
      { topK: 300, topP: 0.8, minP: 0.02, temperature: 1.3, repetitionPenalty: 1.2, presencePenalty: 0.5 },
      { topP: 0.999 },
      { temperature: 0, repetitionPenalty: 3, logitBias: { 5: -50 } },
    ];
    const opts = cases.map((c) => validateSampling(c, V));
    const logits = rng.normals(cases.length * V, 3);
    const prompts = cases.map(() => Array.from({ length: 60 }, () => rng.int(V)));
    const { probs, z } = await gpuProbs(ctx, owned, logits, V, opts, prompts);
    cases.forEach((c, r) => {
      const z64 = processLogits64(logits.subarray(r * V, (r + 1) * V), opts[r]!, prompts[r]);
      allClose(z.subarray(r * V, (r + 1) * V), z64, { rel: 1e-6, atol: 1e-5, rtol: 1e-6 }, `case ${r} z`);
      const { kept, probs: p64 } = distribution64(z64, opts[r]!);
      const row = probs.subarray(r * V, (r + 1) * V);
      const k1 = [...row].flatMap((x, v) => (x > 0 ? [v] : []));
      const k2 = kept.flatMap((k, v) => (k ? [v] : []));
      assert.equal(k1, k2, `case ${r} (${JSON.stringify(c)}): kept ${k1.length} vs ${k2.length}`);
      allClose(row, p64, { atol: 1e-6, rel: 1e-5 }, `case ${r} probs`);
    });
  }));

test('ties: top-k keeps every token tied with the k-th; top-p and min_tokens_to_keep cut ties by smaller id', () =>
  withDevice(async ({ ctx, owned }) => {
    const V = 600;
    // Row 0: ids 100..109 tied at the top -> top-k 3 keeps all ten.
    // Row 1: ten equal tokens (ids 500..509, probability ~0.1 each): top-p 0.25 needs three of them, the smallest ids.
    // Row 2: two leaders then 20 tied tokens: min_tokens_to_keep 5 with top-p 0.01 keeps the leaders + 3 smallest tied ids.
    const logits = new Float32Array(3 * V).fill(-30);
    for (let v = 100; v < 110; v++) logits[v] = 4;
    for (let v = 500; v < 510; v++) logits[V + v] = 5;
    logits[2 * V + 599] = 9;
    logits[2 * V + 0] = 8.5;
    for (let v = 200; v < 220; v++) logits[2 * V + v] = 3;
    const opts = [
      validateSampling({ topK: 3 }, V),
      validateSampling({ topP: 0.25 }, V),
      validateSampling({ topP: 0.01, minTokensToKeep: 5 }, V),
    ];
    const { probs } = await gpuProbs(ctx, owned, logits, V, opts);
    const keptOf = (r: number) => [...probs.subarray(r * V, (r + 1) * V)].flatMap((x, v) => (x > 0 ? [v] : []));
    assert.equal(keptOf(0), [100, 101, 102, 103, 104, 105, 106, 107, 108, 109]);
    assert.equal(keptOf(1), [500, 501, 502]);
    assert.equal(keptOf(2), [0, 200, 201, 202, 599]);
  }));

test('counts: prompt ids and every chosen id are counted on the GPU; frequency penalty sees them', () =>
  withDevice(async ({ ctx, owned }) => {
    const V = 40;
    const logits = new Float32Array(2 * V).map((_, i) => (i % V) / 10); // id 39 is the argmax
    const sampler = await Sampler.create(ctx, V);
    // Greedy with a big frequency penalty: each chosen id drops by 100 and is never chosen again.
    const o = validateSampling({ temperature: 0, freqPenalty: 100 }, V);
    const state = sampler.createState(owned, 2, o, { seeds: [1, 2], eosId: -1, stopAtEos: false });
    sampler.addCounts(state, 1, [39, 39, 38]);
    const got = await steps(ctx, owned, sampler, state, upload(owned, logits, [2, V]), 4);
    assert.equal(got, [
      [39, 37],
      [38, 36],
      [37, 35],
      [36, 34],
    ]);
    const counts = await downloadU32(ctx, state.counts);
    const want = new Uint32Array(2 * V);
    for (const v of [39, 38, 37, 36]) want[v]!++;
    for (const v of [39, 39, 38, 37, 36, 35, 34]) want[V + v]!++;
    assert.equal(Array.from(counts), Array.from(want));
    sampler.resetRow(state, 1);
    const after = await downloadU32(ctx, state.counts);
    assert.equal(Array.from(after.subarray(V)), new Array(V).fill(0));
    assert.equal(Array.from(after.subarray(0, V)), Array.from(want.subarray(0, V)));
    // Reused row 1 with new options (no penalty, bias towards 3): its history is gone.
    sampler.setRow(state, 1, validateSampling({ temperature: 0, logitBias: {} }, V), 9);
    const again = await steps(ctx, owned, sampler, state, upload(owned, logits, [2, V]), 2);
    assert.equal(again, [
      [35, 39],
      [34, 39],
    ]);
    assert.throws(
      () => sampler.setRow(state, 1, validateSampling({ logitBias: { 3: 1 } }, V), 9),
      (e: Error) => e instanceof InvalidOptionError && /without any logit_bias/.test(e.message),
    );
  }));

test('EOS latch: a row that chose EOS outputs EOS again, without counting; steps queue without CPU writes', () =>
  withDevice(async ({ ctx, owned }) => {
    const V = 16;
    const EOS = 15;
    const sampler = await Sampler.create(ctx, V);
    const o = validateSampling({ temperature: 0 }, V);
    const state = sampler.createState(owned, 2, o, { seeds: [3, 4], eosId: EOS, stopAtEos: true });
    // Row 0 prefers EOS at the first step; afterwards both rows see logits whose argmax is 2.
    const first = new Float32Array(2 * V);
    first[EOS] = 5;
    first[V + 7] = 5;
    const later = new Float32Array(2 * V);
    later[2] = 5;
    later[V + 2] = 5;
    // Four steps recorded in one submit, each writing its ids to another (unaligned) slot of one buffer.
    const out = u32(owned, 8);
    const view = (s: number): GpuTensor => ({ buffer: out.buffer, offset: s * 8, shape: [2], dtype: 'u32' });
    const lf = upload(owned, first, [2, V]);
    const ll = upload(owned, later, [2, V]);
    const list = [0, 1, 2, 3].flatMap((s) =>
      sampler.bind(owned, state, { logits: s === 0 ? lf : ll, outIds: view(s) }),
    );
    await run(ctx, list);
    assert.equal(Array.from(await downloadU32(ctx, out)), [EOS, 7, EOS, 2, EOS, 2, EOS, 2]);
    const counts = await downloadU32(ctx, state.counts);
    assert.is(counts[EOS], 1, 'EOS counted once');
    assert.is(
      counts.subarray(0, V).reduce((a, b) => a + b, 0),
      1,
      'the finished row counts nothing more',
    );
    assert.is(counts[V + 2], 3);
    const rs = new Uint32Array(await ctx.readBuffer(state.rowState));
    assert.equal([rs[0], rs[1], rs[4], rs[5]], [1, 1, 4, 0], 'step counters and latches');
  }));

test('park: a parked row draws EOS without reading its logits (NaN), the other rows as before; resetRow clears it', () =>
  withDevice(async ({ ctx, owned }) => {
    const V = 16;
    const EOS = 15;
    const sampler = await Sampler.create(ctx, V);
    const o = validateSampling({ temperature: 0.8, topK: 5, topP: 0.9, freqPenalty: 1 }, V);
    // stopAtEos false: only park latches (a sequence parked in a decode step).
    const state = sampler.createState(owned, 3, o, { seeds: [3, 4, 5], eosId: EOS, stopAtEos: false });
    const logits = new Float32Array(3 * V);
    for (let i = 0; i < V; i++) {
      logits[i] = i === 4 ? 9 : 0;
      logits[V + i] = NaN;
      logits[2 * V + i] = i === 6 ? 9 : 0;
    }
    sampler.park(state, 1);
    const out = u32(owned, 3);
    await run(ctx, sampler.bind(owned, state, { logits: upload(owned, logits, [3, V]), outIds: out }));
    assert.equal(Array.from(await downloadU32(ctx, out)), [4, EOS, 6]);
    assert.throws(() => sampler.park(state, 3), /row/);
    sampler.resetRow(state, 1);
    logits.fill(0, V, 2 * V);
    logits[V + 9] = 9;
    const out2 = u32(owned, 3);
    await run(ctx, sampler.bind(owned, state, { logits: upload(owned, logits, [3, V]), outIds: out2 }));
    assert.is((await downloadU32(ctx, out2))[1], 9, 'after resetRow the row samples again');
  }));

test('vocab 50257, top-k 40 (t 0.7): per-token frequencies of 20000 draws within 4.5 sigma', () =>
  withDevice(async ({ ctx }) => {
    const V = 50257;
    const logits = new Rng(77).normals(V, 2.5);
    const o = validateSampling({ topK: 40, temperature: 0.7, seed: 2024 }, V);
    const N = 20000;
    const r = await sample(ctx, logits, N, { topK: 40, temperature: 0.7, seed: 2024 });
    const { probs } = distribution64(processLogits64(logits, o), o);
    let chi2 = 0;
    for (let v = 0; v < V; v++) {
      const p = probs[v]!;
      if (p === 0) {
        assert.is(r.counts[v], 0, `token ${v} outside the top 40 was drawn`);
        continue;
      }
      const f = r.counts[v]! / N;
      assert.ok(Math.abs(f - p) <= 4.5 * Math.sqrt((p * (1 - p)) / N), `token ${v}: frequency ${f} vs ${p}`);
      chi2 += (r.counts[v]! - N * p) ** 2 / (N * p);
    }
    // 39 degrees of freedom: P(chi2 > 80) < 1e-4.
    assert.ok(chi2 < 80, `chi-square ${chi2.toFixed(1)}`);
    allClose(r.probs, probs, { atol: 1e-6 }, 'probs');
  }));

test('option validation names the option, the value and the domain', () => {
  const cases: Array<[SamplingOptions, RegExp]> = [
    [{ temperature: -0.5 }, /temperature = -0\.5 .*>= 0/],
    [{ temperature: NaN }, /temperature = NaN/],
    [{ topP: 1.5 }, /topP = 1\.5 .*\[0, 1\]/],
    [{ topP: -0.1 }, /topP = -0\.1/],
    [{ topK: -1 }, /topK = -1 .*integer >= 0/],
    [{ topK: 2.5 }, /topK = 2\.5 .*integer/],
    [{ minP: 2 }, /minP = 2 .*\[0, 1\]/],
    [{ repetitionPenalty: 0 }, /repetitionPenalty = 0 .*> 0/],
    [{ freqPenalty: Infinity }, /freqPenalty = Infinity .*finite/],
    [{ minTokensToKeep: 0 }, /minTokensToKeep = 0 .*integer >= 1/],
    [{ seed: -3 }, /seed = -3 .*\[0, 2\^53\)/],
    [{ logitBias: { 100: 1 } }, /logitBias\[100\].*\[0, 50\)/],
    [{ logitBias: { 3: NaN } }, /logitBias\[3\] = NaN .*finite/],
    [{ topk: 3 } as unknown as SamplingOptions, /unknown sampling option "topk"/],
    [{ noRepeatNgramSize: -1 }, /noRepeatNgramSize = -1 .*integer >= 0/],
    [{ noRepeatNgramSize: 1.5 }, /noRepeatNgramSize = 1\.5/],
    [{ minNewTokens: -2 }, /minNewTokens = -2 .*integer >= 0/],
    [{ suppressTokens: [1, 50] }, /suppressTokens\[1\] = 50 .*\[0, 50\)/],
    [{ suppressTokens: 3 as unknown as number[] }, /suppressTokens = 3 .*array of token ids/],
    [{ badWordsIds: [[1], []] }, /badWordsIds\[1\] = \[\] .*non-empty array/],
    [{ badWordsIds: [[1, 2.5]] }, /badWordsIds\[0\]\[1\] = 2\.5/],
    [{ badWordsIds: [1, 2] as unknown as number[][] }, /badWordsIds\[0\] = 1 .*non-empty array/],
  ];
  for (const [o, re] of cases) {
    assert.throws(
      () => validateSampling(o, 50),
      (e: Error) => e instanceof InvalidOptionError && re.test(e.message),
      JSON.stringify(o),
    );
  }
  const n = validateSampling({ logitBias: { 7: 1, 2: -1 } }, 50);
  assert.equal(n, {
    temperature: 1,
    topK: 0,
    topP: 0,
    minP: 0,
    minTokensToKeep: 1,
    freqPenalty: 0,
    presencePenalty: 0,
    repetitionPenalty: 1,
    logitBias: [
      [2, -1],
      [7, 1],
    ],
    noRepeatNgramSize: 0,
    badWordsIds: [],
    suppressTokens: [],
    minNewTokens: 0,
    seed: undefined,
  });
});

test('processLogits with temperature 0 applies the penalties without dividing', () =>
  withDevice(async ({ ctx }) => {
    const logits = Float32Array.from([2, -2, 1, 0.5]);
    const z = await processLogits(
      ctx,
      logits,
      { temperature: 0, repetitionPenalty: 2, presencePenalty: 0.25 },
      [0, 1, 1],
    );
    allClose(z, [2 / 2 - 0.25, -2 * 2 - 0.25, 1, 0.5], { atol: 1e-7 }, 'z');
  }));

test('hard bans (n-grams, bad words, suppressed tokens) set exactly the hand-computed ids to -inf, as float64', () =>
  withDevice(async ({ ctx }) => {
    const V = 64;
    const rng = new Rng(31);
    const prev = [1, 2, 3, 1, 2, 4, 1, 2]; // ends with (1, 2), followed earlier by 3 and by 4
    const none = { noRepeatNgramSize: 0, badWordsIds: [], suppressTokens: [] };
    const cases: Array<[SamplingOptions, number[]]> = [
      [{ noRepeatNgramSize: 2 }, [3, 4]], // after 2 came 3 and 4
      [{ noRepeatNgramSize: 3 }, [3, 4]], // after (1, 2) came 3 and 4
      [{ noRepeatNgramSize: 4 }, []], // (4, 1, 2) never occurred before the end
      [{ noRepeatNgramSize: 1 }, [1, 2, 3, 4]], // every id present
      [{ noRepeatNgramSize: 9 }, []], // longer than the ids + 1
      // [1, 2, 10]: prefix matches -> 10; [7, 11]: no; [12]: always; the 11-token one is longer than the ids.
      [{ badWordsIds: [[1, 2, 10], [7, 11], [12], [3, 2, 1, 2, 3, 1, 2, 4, 1, 2, 13]] }, [10, 12]],
      [{ suppressTokens: [20, 21] }, [20, 21]],
      [{ noRepeatNgramSize: 2, badWordsIds: [[2, 30]], suppressTokens: [31] }, [3, 4, 30, 31]],
    ];
    for (const [opts, want] of cases) {
      const o = validateSampling({ temperature: 0.7, repetitionPenalty: 1.3, ...opts }, V);
      assert.equal(
        [...bans64(prev, o)].sort((a, b) => a - b),
        want,
        `reference: ${JSON.stringify(opts)}`,
      );
      // The banned ids get the largest logits, so that the bans change the greedy choice.
      const logits = Float32Array.from({ length: V }, () => rng.normal());
      for (const id of want) logits[id] = 5 + rng.next();
      const z = await processLogits(ctx, logits, { temperature: 0.7, repetitionPenalty: 1.3, ...opts }, prev);
      const z64 = processLogits64(logits, o, prev);
      const inf = (a: ArrayLike<number>) => Array.from(a, (x, v) => (x === -Infinity ? v : -1)).filter((v) => v >= 0);
      assert.equal(inf(z), want, `GPU bans: ${JSON.stringify(opts)}`);
      assert.equal(inf(z64), want);
      allClose(
        Array.from(z).map((x) => (x === -Infinity ? 0 : x)),
        Array.from(z64).map((x) => (x === -Infinity ? 0 : x)),
        { atol: 1e-5 },
        JSON.stringify(opts),
      );
      const greedy = await sample(ctx, logits, 4, { temperature: 0, ...opts }, prev);
      const pick = greedy.counts.findIndex((c) => c === 4);
      assert.ok(!want.includes(pick), `greedy picked banned ${pick}`);
      if (want.length) {
        const free = await sample(ctx, logits, 1, { temperature: 0, ...none }, prev);
        assert.ok(want.includes(free.counts.findIndex((c) => c === 1)), 'without the bans a banned id wins');
      }
    }
  }));

test('the per-step ban tracker equals bans computed from scratch (and the float64 reference) at every step', () => {
  const rng = new Rng(5);
  for (let trial = 0; trial < 60; trial++) {
    const alphabet = 2 + rng.int(4);
    const word = () => Array.from({ length: 1 + rng.int(3) }, () => rng.int(alphabet));
    const o = {
      noRepeatNgramSize: rng.int(5),
      badWordsIds: Array.from({ length: rng.int(4) }, word),
      suppressTokens: rng.int(3) === 0 ? [rng.int(alphabet)] : [],
    };
    const eos = [rng.int(alphabet)];
    const start = Array.from({ length: rng.int(4) }, () => rng.int(alphabet));
    const tracker = new BanTracker(o, eos, start);
    const h = [...start];
    for (let step = 0; step < 30; step++) {
      const got = new Set([...staticBans(o, eos), ...tracker.next()]);
      const want = bans64(h, { ...o, minNewTokens: 0 }, eos);
      const sorted = (x: Set<number>) => [...x].sort((a, b) => a - b);
      assert.equal(sorted(got), sorted(want), `trial ${trial} step ${step}: ${JSON.stringify({ o, eos, h })}`);
      assert.equal(sorted(bannedNext(h, o, eos)), sorted(want));
      const t = rng.int(alphabet);
      tracker.push(t);
      h.push(t);
    }
  }
});

test.run();
