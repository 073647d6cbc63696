/**
 * The KV cache: cached == uncached (logits at every step, sampled tokens), batched rows ==
 * rows alone, interleaved sessions, context shifts with flat GPU memory, misuse errors.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { compare } from './helpers.js';
import { rejects } from './helpers.js';
import { tinyDir, tinyReference } from './fixtures-util.js';
import { cfgOf, engine, randomModel, tinyModel } from './model-util.js';
import { ForwardPlan, PLAN_STASH_COUNT, promptBucket, rowMeta } from '../src/engine/model.js';
import type { GenerateResult } from '../src/engine/generate.js';
import { AbortError, CacheMisuseError, ContextOverflowError, InvalidOptionError, ShapeError } from '../src/errors.js';
import type { KVCache, Stashable } from '../src/engine/kvcache.js';

const ref = tinyReference();

test('cached logits match a full recompute at every step of a 200-token sequence (1e-4 relative)', async () => {
  const model = await tinyModel();
  const prompt = ref.prompts[1]!.ids;
  // Tokens to feed: the greedy continuation (any token sequence would do).
  const gen = await model.generate(prompt, { temperature: 0, maxNewTokens: 200, stopAtEos: false });
  const seq = [...prompt, ...gen.sequences[0]!.tokens];
  const cache = await model.createCache({ capacity: 256 });
  const P = prompt.length;
  const prefill = new ForwardPlan(model, cache, P, 1);
  const step = new ForwardPlan(model, cache, 1, 1);
  try {
    const meta = new Uint32Array(2 * P);
    for (let t = 0; t < P; t++) meta[2 * t + 1] = t;
    prefill.write({ ids: prompt, meta, lastIdx: Uint32Array.of(P - 1) });
    model.submit(prefill.dispatches);
    let logits = new Float32Array(await model.ctx.readBuffer(prefill.logits.buffer));
    let worst = 0;
    for (let i = P; i <= seq.length - 1; i++) {
      if (i > P) {
        step.write({ ids: [seq[i - 1]!], meta: Uint32Array.of(0, i - 1), lastIdx: Uint32Array.of(0) });
        model.submit(step.dispatches);
        logits = new Float32Array(await model.ctx.readBuffer(step.logits.buffer));
      }
      // Full recompute without a cache, at every step.
      const full = await model.logits(seq.slice(0, i));
      const r = compare(logits, full.data, { rel: 1e-4 });
      assert.ok(r.ok, `step ${i - P}: ${r.message}`);
      worst = Math.max(worst, r.relative);
    }
    assert.ok(worst < 1e-4);
  } finally {
    prefill.destroy();
    step.destroy();
    cache.destroy();
  }
});

test('same seed and options: identical sampled tokens with and without the cache', async () => {
  const model = await tinyModel();
  const opts = {
    temperature: 0.9,
    topK: 40,
    topP: 0.95,
    freqPenalty: 0.5,
    seed: 42,
    maxNewTokens: 64,
    stopAtEos: false,
  };
  const a = await model.generate(ref.prompts[0]!.ids, opts);
  const b = await model.generate(ref.prompts[0]!.ids, { ...opts, useCache: false });
  assert.equal(a.sequences[0]!.tokens, b.sequences[0]!.tokens);
  assert.is(a.sequences[0]!.tokens.length, 64);
});

test('uncached mode: a row that finishes before the others keeps only its own tokens in its context, as with the cache', async () => {
  const model = await tinyModel();
  const caches = [
    await model.createCache({ rows: 2, capacity: 12, keep: 5 }),
    await model.createCache({ rows: 2, capacity: 12, keep: 5 }),
  ];
  try {
    // Row 0 stops after 2 tokens while row 1 runs 8 steps; 6 + 8 tokens would pass the window of 12.
    const prompts = [
      [5, 6, 7, 8, 9, 10],
      [11, 12, 13],
    ];
    const opts = {
      temperature: 0.8,
      seed: 4,
      stopAtEos: false,
      perSequence: [{ maxNewTokens: 2 }, { maxNewTokens: 8 }],
    };
    const cached = await model.generateBatch(prompts, { ...opts, cache: caches[0]! });
    const uncached = await model.generateBatch(prompts, { ...opts, cache: caches[1]!, useCache: false });
    assert.equal(uncached.sequences, cached.sequences);
    const contexts = prompts.map((p, r) => [...p, ...cached.sequences[r]!.tokens]);
    assert.equal(caches[0]!.tokens, contexts, 'cached: prompt and own tokens');
    assert.equal(caches[1]!.tokens, contexts, 'uncached: prompt and own tokens');
    assert.is(uncached.stats.shifts, 0, 'no row passed the window');
  } finally {
    for (const c of caches) c.destroy();
  }
});

test('a batched step over 8 sequences of different prompt lengths equals each alone', async () => {
  const model = await tinyModel();
  const prompts = Array.from({ length: 8 }, (_, i) => ref.prompts[i % ref.prompts.length]!.ids.slice(0, 2 + i));
  const opts = { temperature: 1, seed: 7, maxNewTokens: 24, stopAtEos: false };
  const batched = await model.generateBatch(prompts, opts);
  for (let i = 0; i < 8; i++) {
    const alone = await model.generate(prompts[i]!, { ...opts, seed: batched.seeds[i] });
    assert.equal(batched.sequences[i]!.tokens, alone.sequences[0]!.tokens, `sequence ${i}`);
  }
});

test('16 sessions interleaved on one model give each the tokens it gets alone', async () => {
  const model = await tinyModel();
  const prompts = Array.from({ length: 16 }, (_, i) => ref.prompts[i % ref.prompts.length]!.ids.slice(0, 1 + (i % 5)));
  const opts = (i: number) => ({ temperature: 0.8, topK: 20, seed: 1000 + i, maxNewTokens: 16, stopAtEos: false });
  const sessions = await Promise.all(prompts.map(() => model.createSession()));
  try {
    const together = await Promise.all(prompts.map((p, i) => sessions[i]!.generate(p, opts(i))));
    for (let i = 0; i < 16; i++) {
      const alone = await model.generate(prompts[i]!, opts(i));
      assert.equal(together[i]!.sequences[0]!.tokens, alone.sequences[0]!.tokens, `session ${i}`);
    }
  } finally {
    for (const s of sessions) s.destroy();
  }
});

test("a generation's stats count its own submits, dispatches and read-backs, also while others run", async () => {
  const model = await tinyModel();
  const opts = (seed: number) => ({ temperature: 1, seed, maxNewTokens: 12, stopAtEos: false });
  // Alone: 12 more tokens cost the device exactly 12 x the per-step figures (set-up submits,
  // such as the sampler's, are the same for both lengths and cancel out).
  const counted = async (n: number) => {
    const c = { ...model.ctx.stats };
    const r = await model.generate(ref.prompts[0]!.ids, { ...opts(1), maxNewTokens: n });
    const d = model.ctx.stats;
    return {
      st: r.stats,
      submits: d.submits - c.submits,
      dispatches: d.dispatches - c.dispatches,
      bytes: d.bytesReadBack - c.bytesReadBack,
    };
  };
  const a = await counted(12);
  const b = await counted(24);
  const st = a.st;
  assert.equal([st.steps, b.st.steps, st.submitsPerStep], [12, 24, 1]);
  assert.is(b.submits - a.submits, 12 * st.submitsPerStep);
  assert.is(b.dispatches - a.dispatches, 12 * st.dispatchesPerStep);
  assert.is(b.bytes - a.bytes, 12 * st.readbackBytesPerToken);
  // Three at once on separate sessions: each reports what it reports alone.
  const sessions = await Promise.all([0, 1, 2].map(() => model.createSession()));
  try {
    const c1 = { ...model.ctx.stats };
    const all = await Promise.all(sessions.map((s, i) => s.generate(ref.prompts[0]!.ids, opts(1 + i))));
    for (const r of all) {
      assert.equal(
        [r.stats.submitsPerStep, r.stats.dispatchesPerStep, r.stats.readbackBytesPerToken],
        [st.submitsPerStep, st.dispatchesPerStep, st.readbackBytesPerToken],
      );
    }
    assert.is(model.ctx.stats.submits - c1.submits, 3 * a.submits);
  } finally {
    for (const s of sessions) s.destroy();
  }
});

test('a session continues from its cache: two turns equal one generation over the joined prompt', async () => {
  const model = await tinyModel();
  const s = await model.createSession();
  try {
    const p1 = ref.prompts[0]!.ids;
    const r1 = await s.generate(p1, { temperature: 0, maxNewTokens: 5, stopAtEos: false });
    const p2 = [11, 12, 13];
    const r2 = await s.generate(p2, { temperature: 0, maxNewTokens: 5, stopAtEos: false });
    const joined = await model.generate([...p1, ...r1.sequences[0]!.tokens, ...p2], {
      temperature: 0,
      maxNewTokens: 5,
      stopAtEos: false,
    });
    assert.equal(r2.sequences[0]!.tokens, joined.sequences[0]!.tokens);
    assert.equal(s.tokens, [...p1, ...r1.sequences[0]!.tokens, ...p2, ...r2.sequences[0]!.tokens]);
  } finally {
    s.destroy();
  }
});

/** Frees every plan a cache kept, so its next generation builds its own. */
function dropKept(cache: KVCache): void {
  for (let n = cache.stashedCount; n > 0; n--) cache.unstash((_y): _y is Stashable => true)?.destroy();
  assert.is(cache.stashedCount, 0, 'unstash removes what it returns');
}

test('a cache keeps at most maxItems stashed items and maxBytes, freeing the least recently stashed first; unstash and destroy', async () => {
  const model = await tinyModel();
  const cache = await model.createCache({ capacity: 8 });
  const freed: string[] = [];
  type Item = Stashable & { name: string };
  const item = (name: string, bytes: number): Item => ({ name, bytes, destroy: () => freed.push(name) });
  const named =
    (n: string) =>
    (x: Stashable): x is Item =>
      (x as Item).name.startsWith(n);
  for (const n of ['a1', 'b1', 'a2']) cache.stash(item(n, 10), 3, 100);
  assert.equal([freed, cache.stashedCount, cache.stashedBytes], [[], 3, 30]);
  cache.stash(item('b2', 10), 3, 100); // a 4th item: the oldest goes
  assert.equal(freed, ['a1']);
  cache.stash(item('c', 75), 3, 100); // 3 items again (b1 goes), then 95 bytes: within the budget
  assert.equal([freed, cache.stashedBytes], [['a1', 'b1'], 95]);
  cache.stash(item('d', 20), 3, 100); // count drops a2, then 105 bytes drop b2
  assert.equal([freed, cache.stashedBytes], [['a1', 'b1', 'a2', 'b2'], 95]);
  assert.is(cache.unstash(named('c'))?.name, 'c', 'unstash returns the match');
  assert.equal([cache.unstash(named('c')), cache.stashedCount], [undefined, 1]);
  cache.stash(item('huge', 101), 3, 100); // alone over the budget: freed with the rest
  assert.equal([freed.slice(4), cache.stashedCount], [['d', 'huge'], 0]);
  cache.stash(item('e1', 1), 3, 100);
  cache.stash(item('e2', 1), 3, 100);
  assert.is(cache.unstash(named('e'))?.name, 'e2', 'the most recently stashed match first');
  cache.destroy();
  assert.equal(freed.slice(6), ['e1'], 'destroy frees what is kept');
  cache.stash(item('late', 1), 3, 100);
  assert.equal([freed.slice(7), cache.stashedCount], [['late'], 0], 'a destroyed cache frees at once');
});

test("a cache row's bookkeeping: append (pending), commit (held), shift (the newest `keep`, none held), reset", async () => {
  const model = await tinyModel();
  const cache = await model.createCache({ rows: 2, capacity: 8, keep: 3 });
  try {
    cache.append(1, [10, 11, 12, 13]);
    assert.equal([cache.tokens[1], cache.lengths[1], cache.pending(1)], [[10, 11, 12, 13], 0, [10, 11, 12, 13]]);
    cache.commit(1, 3);
    assert.equal([cache.lengths[1], cache.pending(1)], [3, [13]]);
    assert.throws(
      () => cache.commit(1, 2),
      (e: Error) => e instanceof ShapeError && /commit of 2 tokens of row 1, which has 1 pending/.test(e.message),
    );
    cache.append(1, [14]);
    cache.commit(1);
    assert.equal([cache.lengths[1], cache.pending(1)], [5, []]);
    assert.equal(cache.shift(1), [12, 13, 14]);
    assert.equal([cache.tokens[1], cache.lengths[1], cache.pending(1)], [[12, 13, 14], 0, [12, 13, 14]]);
    assert.equal([cache.tokens[0], cache.lengths[0]], [[], 0], 'other rows untouched');
    cache.reset(1, [7, 8]);
    assert.equal([cache.tokens[1], cache.lengths[1]], [[7, 8], 0]);
    cache.commit(1);
    cache.reset();
    assert.equal(
      [cache.tokens, cache.lengths],
      [
        [[], []],
        [0, 0],
      ],
    );
  } finally {
    cache.destroy();
  }
});

test('a session keeps its plans for the next turn: reused plans give the tokens new ones give, two runs at once never share one', async () => {
  const model = await tinyModel();
  const base = model.ctx.liveBuffers;
  const kept = await model.createSession({ capacity: 96 });
  const fresh = await model.createSession({ capacity: 96 });
  const group = await model.createSessionGroup(2, { capacity: 96 });
  const opts = (seed: number) => ({
    temperature: 1,
    topK: 40,
    freqPenalty: 1.5,
    seed,
    maxNewTokens: 6,
    stopAtEos: false,
  });
  try {
    // Turn 0 prefills 3 tokens; each later turn feeds the last sampled token and 2 new ones: 3 again.
    const prompts = [
      [5, 6, 7],
      [8, 9],
      [10, 11],
      [12, 13],
    ];
    const built: number[][] = [[], []];
    for (const [k, p] of prompts.entries()) {
      const got: number[][] = [];
      for (const [i, s] of [kept, fresh].entries()) {
        if (s === fresh) dropKept(s.cache);
        const b = model.plansBuilt;
        got.push((await s.generate(p, opts(k + 1))).sequences[0]!.tokens);
        built[i]!.push(model.plansBuilt - b);
      }
      assert.equal(got[0], got[1], `turn ${k}: kept plans and new ones sample the same tokens`);
      assert.ok(kept.cache.stashedBytes > 0 && kept.bytes === kept.cache.bytes + kept.cache.stashedBytes);
    }
    assert.equal(
      built,
      [
        [2, 0, 0, 0],
        [2, 2, 2, 2],
      ],
      'plans built per turn: kept session, session whose plans are dropped',
    );
    assert.equal(
      model.ctx.liveBuffers.bytes,
      base.bytes + kept.bytes + fresh.bytes + group.bytes,
      'nothing but the caches and their kept plans is alive',
    );

    // An aborted run does not keep the plans it took (they may be mid-step).
    const n0 = kept.cache.stashedCount;
    const ac = new AbortController();
    await rejects(
      () =>
        kept.generate([14, 15], {
          ...opts(9),
          maxNewTokens: 40,
          signal: ac.signal,
          onToken: (ev) => {
            if (ev.index === 2) ac.abort();
          },
        }),
      (e: Error) => e instanceof AbortError,
    );
    assert.is(kept.cache.stashedCount, n0 - 2, 'the aborted run took the decode and prompt plans and freed them');
    assert.equal(model.ctx.liveBuffers.bytes, base.bytes + kept.bytes + fresh.bytes + group.bytes);

    // Two runs on one cache at once (a group's sessions; `seeds` keeps them from merging) each
    // take a plan of their own: the same turns one after another sample the same tokens.
    const [a, b] = group.sessions as [typeof kept, typeof kept];
    await a.generate([20, 21], opts(5));
    await b.generate([22, 23], opts(6));
    assert.ok(group.cache.stashedCount >= 2, 'the group kept a decode plan and a prompt plan');
    const [ra, rb] = await Promise.all([
      a.generate([24, 25], { ...opts(7), seed: undefined, seeds: [7] }),
      b.generate([26, 27], { ...opts(8), seed: undefined, seeds: [8] }),
    ]);
    assert.equal([ra.stats.batchRows, rb.stats.batchRows], [1, 1]);
    const solo = await model.createSessionGroup(2, { capacity: 96 });
    try {
      const [sa, sb] = solo.sessions as [typeof kept, typeof kept];
      await sa.generate([20, 21], opts(5));
      await sb.generate([22, 23], opts(6));
      assert.equal((await sa.generate([24, 25], opts(7))).sequences[0]!.tokens, ra.sequences[0]!.tokens);
      assert.equal((await sb.generate([26, 27], opts(8))).sequences[0]!.tokens, rb.sequences[0]!.tokens);
    } finally {
      solo.destroy();
    }
  } finally {
    kept.destroy();
    fresh.destroy();
    group.destroy();
  }
  assert.equal(model.ctx.liveBuffers, base, 'sessions and groups free their kept plans with their caches');
});

test('promptBuckets: prompt plans built for 8/16/32/64 tokens serve shorter prompts (the rest parked), with the tokens exact plans give', async () => {
  const model = await tinyModel();
  const was = model.promptBuckets;
  const bucketed = await model.createSession({ capacity: 160 });
  const exact = await model.createSession({ capacity: 160 });
  const opts = (seed: number) => ({
    temperature: 1,
    topK: 40,
    freqPenalty: 1.5,
    seed,
    maxNewTokens: 5,
    stopAtEos: false,
  });
  try {
    // Turn lengths (the first feeds its prompt; later ones the last sampled token too): 3, 5, 2+1,
    // 7, 6+1 fit the 8-token plan; 12 + 1 takes a 16-token one; 70 + 1 (past 64) an exact one.
    const prompts = [
      [5, 6, 7],
      [8, 9, 10, 11],
      [12, 13],
      [14, 15, 16, 17, 18, 19],
      [20, 21, 22, 23, 24, 25],
      Array.from({ length: 12 }, (_, i) => 30 + i),
      Array.from({ length: 70 }, (_, i) => 100 + i),
    ];
    const built: number[][] = [[], []];
    for (const [k, p] of prompts.entries()) {
      const got: GenerateResult[] = [];
      for (const [i, s] of [bucketed, exact].entries()) {
        model.promptBuckets = s === bucketed;
        const b = model.plansBuilt;
        got.push(await s.generate(p, opts(k + 1)));
        built[i]!.push(model.plansBuilt - b);
      }
      assert.equal(
        got[0]!.sequences[0],
        got[1]!.sequences[0],
        `turn ${k}: bucketed and exact prompt plans sample the same tokens`,
      );
    }
    assert.equal(bucketed.tokens, exact.tokens);
    assert.equal(
      built,
      [
        [2, 0, 0, 0, 0, 1, 1],
        [2, 1, 0, 1, 0, 1, 1],
      ],
      'plans built per turn: bucketed, exact',
    );
    const kept = (s: typeof bucketed) => {
      const Ts: number[] = [];
      for (let n = s.cache.stashedCount; n > 0; n--) {
        const x = s.cache.unstash((y): y is ForwardPlan => y instanceof ForwardPlan)!;
        Ts.push(x.decode ? -x.T : x.T);
        x.destroy();
      }
      return Ts.sort((a, b) => a - b);
    };
    assert.equal(
      kept(bucketed),
      [-1, 8, 16, 71],
      'the bucketed session kept its decode plan and the 8-, 16- and 71-token prompt plans',
    );
    assert.equal(kept(exact), [-1, 7, 13, 71]);
  } finally {
    model.promptBuckets = was;
    bucketed.destroy();
    exact.destroy();
  }
  // A decode plan takes exactly T tokens; a padded write must stay inside the tokens given.
  const cache = await model.createCache({ capacity: 16, rows: 2 });
  const dec = new ForwardPlan(model, cache, 2, 2, { decode: true });
  const pre = new ForwardPlan(model, cache, 8, 1);
  try {
    assert.throws(
      () => dec.write({ meta: Uint32Array.of(0, 3) }),
      (e: Error) =>
        e instanceof ShapeError &&
        /decode plan for 2 tokens given meta for 1; a decode plan takes exactly T tokens/.test(e.message),
    );
    assert.throws(
      () => pre.write({ ids: [1, 2, 3], meta: rowMeta(0, 0, 3), lastIdx: Uint32Array.of(3) }),
      (e: Error) => e instanceof ShapeError && /lastIdx 3 points past the 3 tokens given/.test(e.message),
    );
    assert.throws(
      () => pre.write({ ids: [1, 2], meta: rowMeta(0, 0, 3) }),
      (e: Error) => e instanceof ShapeError && /2 ids for meta of 3 tokens/.test(e.message),
    );
  } finally {
    dec.destroy();
    pre.destroy();
    cache.destroy();
  }
  assert.equal(
    [promptBucket(1), promptBucket(8), promptBucket(9), promptBucket(33), promptBucket(64), promptBucket(65)],
    [8, 8, 16, 64, 64, 65],
  );
  await rejects(
    async () => (await engine()).loadModel(tinyDir(), { promptBuckets: 'yes' as never }),
    (e: Error) => e instanceof InvalidOptionError && /promptBuckets must be a boolean, got yes/.test(e.message),
  );
});

test('5,000 tokens with context shifts: runs, shifts, and GPU memory stays flat', async () => {
  const model = await tinyModel();
  const base = model.ctx.liveBuffers;
  const s = await model.createSession({ capacity: 128, keep: 64 });
  try {
    const before = model.ctx.liveBuffers;
    const samples: number[] = [];
    const res = await s.generate(ref.prompts[0]!.ids, {
      temperature: 1,
      seed: 3,
      maxNewTokens: 5000,
      stopAtEos: false,
      onToken: (ev) => {
        if (ev.index % 500 === 499) samples.push(model.ctx.liveBuffers.bytes);
      }, // all after the first shift
    });
    assert.is(res.sequences[0]!.tokens.length, 5000);
    assert.ok(res.stats.shifts >= 70, `expected many shifts, got ${res.stats.shifts}`);
    const during = Math.max(...samples) - Math.min(...samples);
    assert.is(during, 0, `GPU bytes varied by ${during} during the run`);
    // What stays is what the session keeps for its next turn (its plans), and that goes with it.
    const kept = s.bytes - s.cache.bytes;
    assert.ok(
      kept > 0 && s.cache.stashedCount <= PLAN_STASH_COUNT,
      `kept ${kept} bytes in ${s.cache.stashedCount} plans`,
    );
    assert.equal(
      model.ctx.liveBuffers.bytes,
      before.bytes + kept,
      'live buffers after the run: those before plus the kept plans',
    );
  } finally {
    s.destroy();
  }
  assert.equal(model.ctx.liveBuffers, base, 'the session freed its cache and its plans');
});

// Capacity 32 / keep 16: short re-encodes and windows; 160 / 96: re-encodes of 96 tokens and
// recomputed windows of up to 160 (on CPU adapters prefill_sg, or 'blocks' without subgroups).
for (const [capacity, keep, maxNewTokens] of [
  [32, 16, 80],
  [160, 96, 250],
] as const) {
  test(`shifted generation equals the uncached recompute over the same windows (capacity ${capacity}, keep ${keep})`, async () => {
    const model = await tinyModel();
    const opts = { temperature: 1, seed: 9, maxNewTokens, stopAtEos: false };
    const s1 = await model.createSession({ capacity, keep });
    const s2 = await model.createSession({ capacity, keep });
    try {
      const a = await s1.generate(ref.prompts[0]!.ids, opts);
      const b = await s2.generate(ref.prompts[0]!.ids, { ...opts, useCache: false });
      assert.ok(a.stats.shifts >= 2, `shifts ${a.stats.shifts}`);
      assert.equal(a.sequences[0]!.tokens, b.sequences[0]!.tokens);
    } finally {
      s1.destroy();
      s2.destroy();
    }
  });
}

test('window options given to generate() with a session are refused, not ignored', async () => {
  const model = await tinyModel();
  const s = await model.createSession({ capacity: 32 });
  try {
    await rejects(
      () => s.generate([1], { maxNewTokens: 1, keep: 8 }),
      (e: Error) => e instanceof InvalidOptionError && /createSession/.test(e.message),
    );
  } finally {
    s.destroy();
  }
});

test("onOverflow 'error' makes passing the window a ContextOverflowError", async () => {
  const model = await tinyModel();
  const s = await model.createSession({ capacity: 16, onOverflow: 'error' });
  try {
    await rejects(
      () => s.generate([1, 2, 3], { temperature: 0, maxNewTokens: 20, stopAtEos: false }),
      (e: Error) => e instanceof ContextOverflowError && /16/.test(e.message),
    );
  } finally {
    s.destroy();
  }
});

test("misuse: a destroyed cache, another model's cache, a busy cache", async () => {
  const model = await tinyModel();
  const other = await randomModel(cfgOf({}), 1);
  try {
    const s = await model.createSession();
    s.destroy();
    await rejects(
      () => s.generate([1], { maxNewTokens: 1 }),
      (e: Error) => e instanceof CacheMisuseError && /destroyed/.test(e.message),
    );
    const foreign = await other.createCache();
    await rejects(
      () => model.generate([1], { cache: foreign, maxNewTokens: 1 }),
      (e: Error) => e instanceof CacheMisuseError && /belongs to model/.test(e.message),
    );
    foreign.destroy();
    const busy = await model.createSession();
    const first = busy.generate([1, 2], { maxNewTokens: 8, seed: 1 });
    await rejects(
      () => busy.generate([3], { maxNewTokens: 1 }),
      (e: Error) => e instanceof CacheMisuseError && /busy/.test(e.message),
    );
    await first;
    assert.throws(
      () => {
        const c = busy.cache;
        c.acquire(model);
        c.destroy();
      },
      (e: Error) => e instanceof CacheMisuseError && /busy/.test(e.message),
    );
    busy.cache.release();
    busy.destroy();
  } finally {
    other.destroy();
  }
});

test('each cache reports its bytes and destroy() frees them', async () => {
  const model = await tinyModel();
  const before = model.ctx.liveBuffers;
  const c = await model.createCache({ capacity: 100, rows: 3 });
  const expected = 2 * model.config.n_layer * 3 * 100 * model.config.n_embd * 4;
  assert.is(c.bytes, expected);
  assert.is(model.ctx.liveBuffers.bytes - before.bytes, expected);
  c.destroy();
  assert.equal(model.ctx.liveBuffers, before);
  void engine;
});

test('cache.reset(row): a row outside the cache is an InvalidOptionError (it grew the row list quietly); a destroyed cache refuses', async () => {
  const model = await tinyModel();
  const cache = await model.createCache({ rows: 2, capacity: 16 });
  await model.generate([1, 2], { cache, maxNewTokens: 2, temperature: 0 });
  for (const row of [2, -1, 1.5, Number.NaN])
    assert.throws(
      () => cache.reset(row),
      (e: Error) => e instanceof InvalidOptionError && /^reset: row must be an integer in \[0, 1\]/.test(e.message),
      `row ${row}`,
    );
  assert.is(cache.tokens.length, 2, 'still two rows');
  assert.equal(cache.tokens[1]!.length, 4, 'row 1 kept its context');
  cache.reset(0);
  assert.equal(cache.tokens[0], []);
  assert.equal(cache.tokens[1]!.length, 4, 'only row 0 was reset');
  cache.destroy();
  assert.throws(
    () => cache.reset(),
    (e: Error) => e instanceof CacheMisuseError && /was destroyed/.test(e.message),
  );
  await rejects(
    () => model.logits([1, 2], { allPositions: 'yes' as never }),
    (e: Error) => e instanceof InvalidOptionError && /^allPositions must be a boolean, got yes$/.test(e.message),
  );
});

test.run();
