/**
 * Session groups: conversations that share one KV cache (a row each) and advance together in
 * batched steps (GenerateOptions.cacheRows underneath). Every test compares with the same turns
 * run on separate sessions, one cache each, which the other tests check against a full recompute.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { rejects, Rng } from './helpers.js';
import { tinyReference } from './fixtures-util.js';
import { tinyModel } from './model-util.js';
import type { Session } from '../src/engine/engine.js';
import { CacheMisuseError, InvalidOptionError, OutOfMemoryError, PromptError } from '../src/errors.js';
import type { GenerateOptions, GenerateResult, TokenEvent } from '../src/engine/generate.js';

const ref = tinyReference();
const ids = (i: number, n: number): number[] => ref.prompts[i % ref.prompts.length]!.ids.slice(0, n);

type Model = Awaited<ReturnType<typeof tinyModel>>;
/** Sampled turns sensitive to every count and seed (a strong frequency penalty), at a pipeline depth. */
const sampled = (depth: number) => (seed: number, maxNewTokens: number) => ({
  temperature: 0.9,
  topK: 25,
  freqPenalty: 2,
  seed,
  maxNewTokens,
  stopAtEos: false,
  pipelineDepth: depth,
});
/**
 * A group of n sessions and n separate sessions with the same first turn each (session i: a
 * (2 + i)-token prompt, `first` new tokens with seed i), the histories later turns continue.
 */
async function conversations(
  model: Model,
  n: number,
  capacity: number,
  opts: (seed: number, maxNewTokens: number) => GenerateOptions,
  first: number,
) {
  const group = await model.createSessionGroup(n, { capacity });
  const alone = await Promise.all(Array.from({ length: n }, () => model.createSession({ capacity })));
  for (let i = 0; i < n; i++) {
    await group.sessions[i]!.generate(ids(i, 2 + i), opts(i, first));
    await alone[i]!.generate(ids(i, 2 + i), opts(i, first));
  }
  return { group, alone };
}

test('a group turn advances the named sessions together, each as it would alone; the others are untouched', async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(4, { capacity: 96 });
  const alone = await Promise.all([0, 1, 2, 3].map(() => model.createSession({ capacity: 96 })));
  try {
    // Turn 1, one session at a time: four different histories (lengths 3..9 + 6 new tokens).
    for (let i = 0; i < 4; i++) {
      const o = { temperature: 0, maxNewTokens: 6, stopAtEos: false };
      const a = await group.sessions[i]!.generate(ids(i, 3 + 2 * i), o);
      const b = await alone[i]!.generate(ids(i, 3 + 2 * i), o);
      assert.equal(a.sequences[0]!.tokens, b.sequences[0]!.tokens, `turn 1, session ${i}`);
    }
    const before2 = group.sessions[2]!.tokens;
    // Turn 2: sessions 3, 0, 1 together (out of row order; 2 sits out), sampled with a strong
    // frequency penalty, so each row's own history (its counts) steers what it samples.
    const order = [3, 0, 1];
    const prompts = [[11, 12], [13], [14, 15, 16, 17]];
    const opts = { temperature: 0.9, topK: 20, freqPenalty: 3, seed: 5, maxNewTokens: 12, stopAtEos: false };
    const together = await group.generate(
      order.map((k, i) => ({ session: group.sessions[k]!, prompt: prompts[i]! })),
      opts,
    );
    assert.is(together.stats.steps, 12);
    for (let i = 0; i < 3; i++) {
      const k = order[i]!;
      const solo = await alone[k]!.generate(prompts[i]!, { ...opts, seed: together.seeds[i] });
      assert.equal(together.sequences[i]!.tokens, solo.sequences[0]!.tokens, `turn 2, session ${k}`);
      assert.equal(group.sessions[k]!.tokens, alone[k]!.tokens, `context of session ${k}`);
    }
    // Session 2 kept its context, and its K/V: its next turn equals the separate session's.
    assert.equal(group.sessions[2]!.tokens, before2);
    const o3 = { temperature: 0, maxNewTokens: 8, stopAtEos: false };
    const g2 = await group.sessions[2]!.generate([21, 22], o3);
    const a2 = await alone[2]!.generate([21, 22], o3);
    assert.equal(g2.sequences[0]!.tokens, a2.sequences[0]!.tokens);
  } finally {
    group.destroy();
    for (const s of alone) s.destroy();
  }
});

test('one prompt on empty sessions: prefilled once, its K/V copied into the named rows only', async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(4, { capacity: 64 });
  try {
    const p = ids(1, 7);
    const opts = { temperature: 1, seed: 9, maxNewTokens: 10, stopAtEos: false };
    const r = await group.generate(
      [
        { session: group.sessions[2]!, prompt: p },
        { session: group.sessions[0]!, prompt: p },
      ],
      opts,
    );
    for (const [i, k] of [
      [0, 2],
      [1, 0],
    ] as const) {
      const solo = await model.generate(p, { ...opts, seed: r.seeds[i] });
      assert.equal(r.sequences[i]!.tokens, solo.sequences[0]!.tokens, `session ${k}`);
      assert.equal(group.sessions[k]!.tokens, [...p, ...r.sequences[i]!.tokens]);
    }
    assert.equal([group.sessions[1]!.tokens, group.sessions[3]!.tokens], [[], []]);
    // Second turns continue from the copied K/V (greedy, against a recompute of the joined context).
    for (const [i, k] of [
      [0, 2],
      [1, 0],
    ] as const) {
      const next = await group.sessions[k]!.generate([5], { temperature: 0, maxNewTokens: 6, stopAtEos: false });
      const joined = await model.generate([...p, ...r.sequences[i]!.tokens, 5], {
        temperature: 0,
        maxNewTokens: 6,
        stopAtEos: false,
        useCache: false,
      });
      assert.equal(next.sequences[0]!.tokens, joined.sequences[0]!.tokens, `session ${k}`);
    }
  } finally {
    group.destroy();
  }
});

test('context shifts and the uncached mode inside a group match separate sessions', async () => {
  const model = await tinyModel();
  const opts = { temperature: 0.7, seed: 3, maxNewTokens: 40, stopAtEos: false };
  // Window 16, keep 8: 40 new tokens shift each row several times.
  const groups = [
    await model.createSessionGroup(3, { capacity: 16 }),
    await model.createSessionGroup(3, { capacity: 16 }),
  ];
  const alone: Session[] = [];
  try {
    // Session 0 of each group holds a context the others' turns must leave alone.
    const first = { temperature: 0, maxNewTokens: 4, stopAtEos: false };
    for (const g of groups) await g.sessions[0]!.generate(ids(1, 6), first);
    const turns = (g: number) => [
      { session: groups[g]!.sessions[1]!, prompt: ids(0, 5) },
      { session: groups[g]!.sessions[2]!, prompt: ids(2, 9) },
    ];
    const cached = await groups[0]!.generate(turns(0), opts);
    const uncached = await groups[1]!.generate(turns(1), { ...opts, useCache: false });
    assert.ok(cached.stats.shifts >= 4, `shifts: ${cached.stats.shifts}`);
    for (let i = 0; i < 2; i++) {
      const s = await model.createSession({ capacity: 16 });
      alone.push(s);
      const solo = await s.generate(turns(0)[i]!.prompt, { ...opts, seed: cached.seeds[i] });
      assert.equal(cached.sequences[i]!.tokens, solo.sequences[0]!.tokens, `cached, sequence ${i}`);
      assert.equal(uncached.sequences[i]!.tokens, solo.sequences[0]!.tokens, `uncached, sequence ${i}`);
      assert.equal(groups[0]!.sessions[1 + i]!.tokens, s.tokens);
    }
    // Session 0's next turn, in each group, equals a separate session with its history.
    const s0 = await model.createSession({ capacity: 16 });
    alone.push(s0);
    await s0.generate(ids(1, 6), first);
    const want = await s0.generate([7, 8], first);
    for (const g of groups) {
      const got = await g.sessions[0]!.generate([7, 8], first);
      assert.equal(got.sequences[0]!.tokens, want.sequences[0]!.tokens);
    }
  } finally {
    for (const g of groups) g.destroy();
    for (const s of alone) s.destroy();
  }
});

test('sessions of one group generate at the same time; a busy session is refused', async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(3, { capacity: 64 });
  try {
    const [s0, s1, s2] = group.sessions as [Session, Session, Session];
    const o = (seed: number) => ({ temperature: 0.8, topK: 30, seed, maxNewTokens: 12, stopAtEos: false });
    const first = s0.generate(ids(0, 4), o(1));
    await rejects(
      () => s0.generate([1], { maxNewTokens: 1 }),
      (e: Error) => e instanceof CacheMisuseError && /busy \(row 0\)/.test(e.message),
    );
    await rejects(
      () =>
        group.generate(
          [
            { session: s1, prompt: [1] },
            { session: s0, prompt: [2] },
          ],
          { maxNewTokens: 1 },
        ),
      (e: Error) => e instanceof CacheMisuseError && /busy \(row 0\)/.test(e.message),
    );
    assert.throws(
      () => s0.reset(),
      (e: Error) => e instanceof CacheMisuseError && /busy/.test(e.message),
    );
    assert.throws(
      () => group.destroy(),
      (e: Error) => e instanceof CacheMisuseError && /busy/.test(e.message),
    );
    const [a, b, c] = await Promise.all([first, s1.generate(ids(1, 6), o(2)), s2.generate(ids(2, 2), o(3))]);
    const want = await Promise.all([
      model.generate(ids(0, 4), o(1)),
      model.generate(ids(1, 6), o(2)),
      model.generate(ids(2, 2), o(3)),
    ]);
    assert.equal(
      [a, b, c].map((r) => r.sequences[0]!.tokens),
      want.map((r) => r.sequences[0]!.tokens),
    );
    assert.ok(!group.cache.busy);
    s1.reset();
    assert.equal([s0.tokens.length, s1.tokens.length], [16, 0]);
  } finally {
    group.destroy();
  }
});

test('group misuse: bad cacheRows, foreign sessions, destroying a member; nothing left allocated', async () => {
  const model = await tinyModel();
  const before = model.ctx.liveBuffers;
  const group = await model.createSessionGroup(3, { capacity: 32 });
  const other = await model.createSessionGroup(2, { capacity: 32 });
  const single = await model.createSession({ capacity: 32 });
  try {
    const c = group.cache;
    const bad = (cacheRows: unknown, re: RegExp, extra: object = {}) =>
      rejects(
        () =>
          model.generateBatch([[1], [2]], { cache: c, cacheRows: cacheRows as number[], maxNewTokens: 1, ...extra }),
        (e: Error) => e instanceof InvalidOptionError && re.test(e.message),
      );
    await bad([0, 0], /row 0 twice/);
    await bad([0, 3], /cacheRows\[1\] must be an integer in \[0, 2\].*got 3/);
    await bad([0, 1.5], /cacheRows\[1\].*got 1.5/);
    await bad([2], /1 rows for 2 sequences/);
    await bad('01', /non-empty array/);
    await bad([], /non-empty array/);
    await rejects(
      () => model.generate([1], { cacheRows: [0], maxNewTokens: 1 }),
      (e: Error) => e instanceof InvalidOptionError && /pass the cache too/.test(e.message),
    );
    await rejects(
      () => model.generateBatch([[1], [2]], { cache: c, maxNewTokens: 1 }),
      (e: Error) => e instanceof InvalidOptionError && /3 rows but numSequences is 2.*cacheRows/.test(e.message),
    );
    await rejects(
      () => group.generate([{ session: other.sessions[0]!, prompt: [1] }]),
      (e: Error) =>
        e instanceof CacheMisuseError && /turns\[0\].session is not a session of this group/.test(e.message),
    );
    await rejects(
      () => group.generate([{ session: single, prompt: [1] }]),
      (e: Error) => e instanceof CacheMisuseError && /not a session of this group/.test(e.message),
    );
    await rejects(
      () =>
        group.generate([
          { session: group.sessions[0]!, prompt: [1] },
          { session: group.sessions[0]!, prompt: [2] },
        ]),
      (e: Error) =>
        e instanceof InvalidOptionError &&
        /^turns\[1\].session is also turns\[0\]'s: a session takes one turn/.test(e.message),
    );
    await rejects(
      () => group.generate([]),
      (e: Error) => e instanceof InvalidOptionError && /non-empty array/.test(e.message),
    );
    await rejects(
      () => group.sessions[0]!.generate([1], { numSequences: 2 }),
      (e: Error) =>
        e instanceof InvalidOptionError && /numSequences 2: a session of a group is one sequence/.test(e.message),
    );
    assert.throws(
      () => group.sessions[1]!.destroy(),
      (e: Error) =>
        e instanceof CacheMisuseError && /row 1 of a session group.*reset\(\).*group.destroy\(\)/.test(e.message),
    );
    await rejects(
      () => model.createSessionGroup(0),
      (e: Error) => e instanceof InvalidOptionError && /count must be a positive integer/.test(e.message),
    );
    await rejects(
      () => model.createSessionGroup(2, { rows: 4 } as object),
      (e: Error) => e instanceof InvalidOptionError && /not rows/.test(e.message),
    );
    await rejects(
      () => model.createSessionGroup(5000),
      (e: Error) =>
        e instanceof InvalidOptionError &&
        /createSessionGroup\(5000\): one cache row per session: cache rows must be an integer in \[1, 4096\]/.test(
          e.message,
        ),
    );
    // 4096 rows x 4096 slots pass the binding-size limit of every adapter for any n_embd >= 2: refused before allocating.
    await rejects(
      () => model.createSessionGroup(4096, { capacity: 4096 }),
      (e: Error) =>
        e instanceof OutOfMemoryError &&
        /createSessionGroup\(4096\): one cache row per session: .*use at most \d+ rows/.test(e.message),
    );
    await rejects(
      () => model.createSessionGroup(2, { keep: 0 }),
      (e: Error) => e instanceof InvalidOptionError && /createSessionGroup\(2\).*keep must be/.test(e.message),
    );
    // A failed call leaves no row busy, and a real turn after them works.
    assert.ok(!c.busy);
    const r = await group.generate([{ session: group.sessions[1]!, prompt: [1, 2] }], {
      temperature: 0,
      maxNewTokens: 3,
      stopAtEos: false,
    });
    assert.is(r.sequences[0]!.tokens.length, 3);
  } finally {
    group.destroy();
    other.destroy();
    single.destroy();
  }
  await rejects(
    () => group.sessions[0]!.generate([1], { maxNewTokens: 1 }),
    (e: Error) => e instanceof CacheMisuseError && /destroyed/.test(e.message),
  );
  assert.equal(model.ctx.liveBuffers, before);
});

test("turns started together on a group's sessions are merged into one batched run, each as it would go alone", async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(5, { capacity: 96 });
  const alone = await Promise.all([0, 1, 2, 3, 4].map(() => model.createSession({ capacity: 96 })));
  try {
    const first = { temperature: 0, maxNewTokens: 5, stopAtEos: false };
    for (let i = 0; i < 5; i++) {
      const g = await group.sessions[i]!.generate(ids(i, 2 + 2 * i), first); // awaited one by one: alone
      assert.is(g.stats.batchRows, 1);
      await alone[i]!.generate(ids(i, 2 + 2 * i), first);
    }
    const opts = (seed: number) => ({
      temperature: 0.9,
      topK: 25,
      freqPenalty: 2,
      seed,
      maxNewTokens: 10,
      stopAtEos: false,
    });
    const events: TokenEvent[] = [];
    const c0 = { ...model.ctx.stats };
    const live0 = model.ctx.liveBuffers;
    const kept0 = group.cache.stashedBytes;
    // Sessions 3, 0, 1, 4 and 2 merge, each with its own seed, sampling options, new tokens and stop
    // strings (one listens to its tokens, one has a signal of its own, never fired). Session 1's
    // options leave out topK, freqPenalty and maxNewTokens (default 30): none of the others' may
    // leak into its row.
    const opts1 = { seed: 33, temperature: 0.6, topP: 0.9, stopAtEos: false };
    const [r3, r0, r1, r4, r2] = await Promise.all([
      group.sessions[3]!.generate([11, 12], opts(31)),
      group.sessions[0]!.generate([13], { ...opts(32), onToken: (ev) => events.push(ev) }),
      group.sessions[1]!.generate([14, 15, 16], opts1),
      group.sessions[4]!.generate([17], { ...opts(34), maxNewTokens: 6, stopStrings: ['e'] }),
      group.sessions[2]!.generate([18], { ...opts(35), signal: new AbortController().signal }),
    ]);
    assert.equal(
      [r3, r0, r1, r4, r2].map((r) => r!.stats.batchRows),
      [5, 5, 5, 5, 5],
    );
    // Nothing else stays than the plans the group's cache keeps for the next turns (once the run,
    // whose turns resolved as each was done, has ended).
    await group.idle();
    assert.equal(
      model.ctx.liveBuffers.bytes - live0.bytes,
      group.cache.stashedBytes - kept0,
      'the merged run freed what it made',
    );
    // One run (30 steps) rather than five (66 steps).
    assert.ok(model.ctx.stats.submits - c0.submits < 45, `${model.ctx.stats.submits - c0.submits} submits`);
    const want = await Promise.all([
      alone[3]!.generate([11, 12], opts(31)),
      alone[0]!.generate([13], opts(32)),
      alone[1]!.generate([14, 15, 16], opts1),
      alone[4]!.generate([17], { ...opts(34), maxNewTokens: 6, stopStrings: ['e'] }),
      alone[2]!.generate([18], opts(35)),
    ]);
    [r3, r0, r1, r4, r2].forEach((r, i) => {
      assert.equal(r!.sequences[0]!, want[i]!.sequences[0]!, `turn ${i}`); // tokens, text, finish reason
      assert.is(r!.seed, want[i]!.seed);
      assert.equal(r!.seeds, [r!.seed]);
    });
    assert.equal(r0!.promptIds, [13]);
    assert.equal(
      events.map((e) => [e.row, e.token]),
      r0!.sequences[0]!.tokens.map((t) => [0, t]),
    );
    for (let k = 0; k < 5; k++) assert.equal(group.sessions[k]!.tokens, alone[k]!.tokens, `context of session ${k}`);
  } finally {
    group.destroy();
    for (const s of alone) s.destroy();
  }
});

// pipelineDepth 3 (the GPU default): steps already in flight when a row is handed over still
// write it, before the session's next turn on the queue.
for (const depth of [1, 3])
  test(`a merged turn resolves when its own sequence is done, and its session takes its next turn while the run goes on (pipelineDepth ${depth})`, async () => {
    const model = await tinyModel();
    const base = model.ctx.liveBuffers;
    const opts = sampled(depth);
    const { group, alone } = await conversations(model, 3, 96, opts, 4);
    try {
      // Session 0 wants 3 tokens, 1 wants 40, 2 wants 12 (stopping at the first 'a' too); when
      // session 0's turn resolves, its next turn starts at once, beside the 2 rows still going.
      const order: string[] = [];
      let next: Promise<unknown> | undefined;
      const [r0, r1, r2] = await Promise.all([
        group.sessions[0]!.generate([21, 22], opts(10, 3)).then((r) => {
          order.push('0');
          assert.not.ok(group.cache.busy && group.queuedRows().includes(0));
          next = group.sessions[0]!.generate([23, 24, 25], opts(13, 8)).then((q) => {
            order.push('0 next');
            return q;
          });
          return r;
        }),
        group.sessions[1]!.generate([26], opts(11, 40)).then((r) => {
          order.push('1');
          return r;
        }),
        group.sessions[2]!.generate([27, 28], { ...opts(12, 12), stopStrings: ['a'] }).then((r) => {
          order.push('2');
          return r;
        }),
      ]);
      const r0next = (await next) as typeof r0;
      await group.idle();
      assert.equal(
        [r0, r1, r2].map((r) => r.stats.batchRows),
        [3, 3, 3],
      );
      assert.ok(order.indexOf('0') < order.indexOf('1') && order.indexOf('2') < order.indexOf('1'), order.join(', '));
      assert.is(r0.sequences[0]!.tokens.length, 3);
      assert.ok(
        r0.stats.steps < r1.stats.steps,
        `${r0.stats.steps} steps when session 0 was done, ${r1.stats.steps} in all`,
      );
      // The same turns on separate sessions, one after another: the same tokens, texts and contexts
      // (the run went on without writing session 0's row while its next turn used it).
      const w0 = await alone[0]!.generate([21, 22], opts(10, 3));
      const w0next = await alone[0]!.generate([23, 24, 25], opts(13, 8));
      const w1 = await alone[1]!.generate([26], opts(11, 40));
      const w2 = await alone[2]!.generate([27, 28], { ...opts(12, 12), stopStrings: ['a'] });
      assert.equal(
        [r0, r0next, r1, r2].map((r) => r.sequences[0]),
        [w0, w0next, w1, w2].map((r) => r.sequences[0]),
      );
      for (let k = 0; k < 3; k++) assert.equal(group.sessions[k]!.tokens, alone[k]!.tokens, `context of session ${k}`);
      assert.ok(!group.cache.busy);
    } finally {
      group.destroy();
      for (const s of alone) s.destroy();
    }
    assert.equal(model.ctx.liveBuffers, base);
  });

for (const depth of [1, 3])
  test(`turns that arrive while a merged run goes on take its parked slots (continuous batching), each as it would go alone (pipelineDepth ${depth})`, async () => {
    const model = await tinyModel();
    const base = model.ctx.liveBuffers;
    const opts = sampled(depth);
    const { group, alone } = await conversations(model, 4, 128, opts, 3);
    try {
      // Sessions 0, 1, 2 start together (3 slots). When session 0 is done, its next turn joins its
      // slot; when that is done, session 3 (not in the run before) joins, with a stop string and a
      // listener; when session 2 is done, session 0's third turn takes session 2's slot.
      const events: TokenEvent[] = [];
      let p0b: Promise<GenerateResult> | undefined,
        p0c: Promise<GenerateResult> | undefined,
        p3: Promise<GenerateResult> | undefined;
      const first = await Promise.all([
        group.sessions[0]!.generate([30], opts(10, 3)).then((r) => {
          p0b = group.sessions[0]!.generate([31, 32], opts(20, 5)).then((b) => {
            p3 = group.sessions[3]!.generate([33], {
              ...opts(21, 8),
              stopStrings: ['e'],
              onToken: (ev) => events.push(ev),
            });
            return b;
          });
          return r;
        }),
        group.sessions[1]!.generate([37, 38], opts(11, 40)),
        group.sessions[2]!.generate([39], opts(12, 12)).then((r) => {
          p0c = (async () => {
            while (!p0b) await new Promise((res) => setTimeout(res, 1));
            await p0b; // session 0's turns in order
            return group.sessions[0]!.generate([34, 35, 36], opts(22, 4));
          })();
          return r;
        }),
      ]);
      const r0b = await p0b!;
      const r0c = await p0c!;
      while (!p3) await new Promise((res) => setTimeout(res, 1));
      const r3 = await p3;
      await group.idle();
      // Each joiner ran in the 3-slot run's steps.
      assert.equal(
        [...first, r0b, r3].map((r) => r.stats.batchRows),
        [3, 3, 3, 3, 3],
      );
      assert.ok(r0b.stats.firstTokenMs > 0 && r0b.stats.setupMs === 0, JSON.stringify(r0b.stats));
      assert.equal(
        events.map((e) => [e.row, e.index, e.token]),
        r3.sequences[0]!.tokens.map((t, i) => [0, i, t]),
      );
      // The same turns on separate sessions, each session's in order.
      const want = {
        0: [
          await alone[0]!.generate([30], opts(10, 3)),
          await alone[0]!.generate([31, 32], opts(20, 5)),
          await alone[0]!.generate([34, 35, 36], opts(22, 4)),
        ],
        1: [await alone[1]!.generate([37, 38], opts(11, 40))],
        2: [await alone[2]!.generate([39], opts(12, 12))],
        3: [await alone[3]!.generate([33], { ...opts(21, 8), stopStrings: ['e'] })],
      };
      assert.equal(
        [first[0], r0b, r0c].map((r) => r.sequences[0]),
        want[0].map((r) => r.sequences[0]),
        'session 0',
      );
      assert.equal(first[1]!.sequences[0], want[1][0]!.sequences[0], 'session 1');
      assert.equal(first[2]!.sequences[0], want[2][0]!.sequences[0], 'session 2');
      assert.equal(r3.sequences[0], want[3][0]!.sequences[0], 'session 3');
      for (let k = 0; k < 4; k++) {
        assert.equal(group.sessions[k]!.tokens, alone[k]!.tokens, `context of session ${k}`);
        assert.is(group.cache.lengths[k], alone[k]!.cache.lengths[0], `K/V held for session ${k}`);
      }
      assert.ok(!group.cache.busy);
    } finally {
      await group.idle();
      group.destroy();
      for (const s of alone) s.destroy();
    }
    assert.equal(model.ctx.liveBuffers, base);
  });

test('group.idle() waits for turns running alone too (one turn in its tick, and one with a logit bias beside a merged run)', async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(3, { capacity: 64 });
  try {
    const settled: string[] = [];
    const track = (name: string, p: Promise<GenerateResult>) => p.then(() => settled.push(name));
    void track('lone', group.sessions[0]!.generate(ids(0, 4), { temperature: 0, maxNewTokens: 6, stopAtEos: false }));
    await group.idle();
    assert.equal(settled, ['lone'], 'a single turn of its tick runs alone; idle() waited for it');
    void track(
      'merged a',
      group.sessions[1]!.generate(ids(1, 3), { temperature: 0, maxNewTokens: 5, stopAtEos: false }),
    );
    void track(
      'merged b',
      group.sessions[2]!.generate(ids(2, 3), { temperature: 0, maxNewTokens: 5, stopAtEos: false }),
    );
    void track(
      'biased',
      group.sessions[0]!.generate([7], { temperature: 0, maxNewTokens: 9, stopAtEos: false, logitBias: { 5: 2 } }),
    );
    await group.idle();
    assert.equal([...settled].sort(), ['biased', 'lone', 'merged a', 'merged b']);
    assert.ok(!group.cache.busy);
  } finally {
    group.destroy();
  }
});

test('a chat load: users send their next message as soon as their reply comes; every reply is what that conversation gets alone', async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(3, { capacity: 160 });
  const alone = await Promise.all([0, 1, 2].map(() => model.createSession({ capacity: 160 })));
  try {
    const lens = [
      [3, 9, 5],
      [8, 2, 7],
      [5, 6, 1],
    ]; // new tokens per user and turn
    const opts = (u: number, t: number) => ({
      temperature: 0.9,
      topK: 30,
      freqPenalty: 1,
      seed: 10 * u + t,
      maxNewTokens: lens[u]![t]!,
      stopAtEos: false,
    });
    const msg = (u: number, t: number) => [40 + u, 50 + t];
    const got = await Promise.all(
      [0, 1, 2].map(async (u) => {
        const replies: GenerateResult[] = [];
        for (let t = 0; t < 3; t++) replies.push(await group.sessions[u]!.generate(msg(u, t), opts(u, t)));
        return replies;
      }),
    );
    await group.idle();
    assert.ok(
      got.flat().some((r) => r.stats.batchRows > 1),
      'turns shared steps',
    );
    for (let u = 0; u < 3; u++) {
      for (let t = 0; t < 3; t++) {
        const want = await alone[u]!.generate(msg(u, t), opts(u, t));
        assert.equal(got[u]![t]!.sequences[0], want.sequences[0], `user ${u}, turn ${t}`);
      }
      assert.equal(group.sessions[u]!.tokens, alone[u]!.tokens);
    }
    // onSequenceDone of group.generate (no joins): a sequence's row is free in its callback, the
    // last one's too, so the callback may start that session's next turn.
    const next: Array<Promise<GenerateResult>> = [];
    await group.generate(
      [
        { session: group.sessions[0]!, prompt: [60] },
        { session: group.sessions[1]!, prompt: [61] },
      ],
      {
        temperature: 0,
        maxNewTokens: 3,
        stopAtEos: false,
        onSequenceDone: (ev) => next.push(group.sessions[ev.row]!.generate([62], { temperature: 0, maxNewTokens: 2 })),
      },
    );
    assert.is((await Promise.all(next)).length, 2);
    await group.idle();
  } finally {
    group.destroy();
    for (const s of alone) s.destroy();
  }
});

// Random arrivals: users wait a random time before each message, turns have random lengths, stop
// strings and sampling options, EOS stops some; whatever merged, joined or ran alone, every reply
// and every context equals that conversation run alone.
for (const seed of [1, 2])
  test(`random arrivals (seed ${seed}): every reply equals the conversation alone`, async () => {
    const model = await tinyModel();
    const rng = new Rng(seed);
    const U = 4,
      TURNS = 4;
    const group = await model.createSessionGroup(U, { capacity: 192 });
    const alone = await Promise.all(Array.from({ length: U }, () => model.createSession({ capacity: 192 })));
    const plan = Array.from({ length: U }, (_, u) =>
      Array.from({ length: TURNS }, (_, t) => ({
        wait: t === 0 || rng.next() < 0.6 ? 0 : 1 + Math.floor(rng.next() * 3), // ms; 0: at once
        prompt: Array.from({ length: 1 + Math.floor(rng.next() * 4) }, () => 1 + Math.floor(rng.next() * 500)),
        opts: {
          temperature: 0.5 + rng.next(),
          topK: rng.next() < 0.5 ? 20 : 0,
          freqPenalty: rng.next() < 0.5 ? 1 : 0,
          seed: 100 * u + t,
          maxNewTokens: 1 + Math.floor(rng.next() * 20),
          stopAtEos: true,
          ...(rng.next() < 0.3 ? { stopStrings: ['e'] } : {}),
        },
      })),
    );
    try {
      const got = await Promise.all(
        plan.map(async (turns, u) => {
          const out: GenerateResult[] = [];
          for (const t of turns) {
            if (t.wait) await new Promise((res) => setTimeout(res, t.wait));
            out.push(await group.sessions[u]!.generate(t.prompt, t.opts));
          }
          return out;
        }),
      );
      await group.idle();
      // Later turns shared steps too: they joined runs in flight (or merged among themselves).
      assert.ok(
        got.some((g) => g.slice(1).some((r) => r.stats.batchRows > 1)),
        JSON.stringify(got.map((g) => g.map((r) => r.stats.batchRows))),
      );
      for (let u = 0; u < U; u++) {
        for (const [t, turn] of plan[u]!.entries()) {
          const want = await alone[u]!.generate(turn.prompt, turn.opts);
          assert.equal(got[u]![t]!.sequences[0], want.sequences[0], `user ${u}, turn ${t}`);
        }
        assert.equal(group.sessions[u]!.tokens, alone[u]!.tokens, `context of user ${u}`);
        assert.is(group.cache.lengths[u], alone[u]!.cache.lengths[0], `K/V held for user ${u}`);
      }
    } finally {
      group.destroy();
      for (const s of alone) s.destroy();
    }
  });

test('onSequenceDone: once per sequence (at the end without a session cache); a non-function is refused', async () => {
  const model = await tinyModel();
  const seen: Array<[number, number[]]> = [];
  const r = await model.generate([5, 6], {
    numSequences: 3,
    seed: 2,
    maxNewTokens: 4,
    stopAtEos: false,
    onSequenceDone: (ev) => seen.push([ev.row, ev.sequence.tokens]),
  });
  assert.equal(
    seen,
    r.sequences.map((q, i) => [i, q.tokens]),
  );
  await rejects(
    () => model.generate([5], { onSequenceDone: 3 as never }),
    (e: Error) => e instanceof InvalidOptionError && /onSequenceDone must be a function, got number/.test(e.message),
  );
  await rejects(
    () => model.generate([5], { onToken: 'x' as never }),
    (e: Error) => e instanceof InvalidOptionError && /onToken must be a function, got string/.test(e.message),
  );
});

test('merged turns: a bad prompt fails alone; a queued session is busy; seeds and seed are exclusive', async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(3, { capacity: 32 });
  try {
    const [s0, s1, s2] = group.sessions as [Session, Session, Session];
    const o = { temperature: 1, seed: 4, maxNewTokens: 3, stopAtEos: false };
    const results = await Promise.allSettled([s0.generate([1, 2], o), s1.generate([1, 99999], o), s2.generate([3], o)]);
    assert.equal(
      results.map((r) => r.status),
      ['fulfilled', 'rejected', 'fulfilled'],
    );
    assert.ok((results[1] as PromiseRejectedResult).reason instanceof PromptError);
    assert.equal(s1.tokens, []);
    assert.is((results[0] as PromiseFulfilledResult<{ stats: { batchRows: number } }>).value.stats.batchRows, 2);
    // Queued (not started yet) counts as busy.
    const p = s0.generate([5], o);
    await rejects(
      () => s0.generate([6], o),
      (e: Error) => e instanceof CacheMisuseError && /busy \(row 0\)/.test(e.message),
    );
    assert.throws(
      () => s0.reset(),
      (e: Error) => e instanceof CacheMisuseError && /busy/.test(e.message),
    );
    await p;
    const q = s1.generate([5], o);
    const explicit = group.generate([{ session: s1, prompt: [1] }]); // checked now, while s1's turn waits for the tick's end
    assert.throws(
      () => group.destroy(),
      (e: Error) => e instanceof CacheMisuseError && /about to start/.test(e.message),
    );
    await rejects(
      () => explicit,
      (e: Error) => e instanceof CacheMisuseError && /turns\[0\].session has a turn about to start/.test(e.message),
    );
    await q;
    await rejects(
      () => model.generateBatch([[1], [2]], { seeds: [1, 2], seed: 3, maxNewTokens: 1 }),
      (e: Error) => e instanceof InvalidOptionError && /seed or seeds, not both/.test(e.message),
    );
    await rejects(
      () => model.generateBatch([[1], [2]], { seeds: [1], maxNewTokens: 1 }),
      (e: Error) => e instanceof InvalidOptionError && /one seed per sequence \(2\)/.test(e.message),
    );
    await rejects(
      () => model.generateBatch([[1], [2]], { seeds: [1, -1], maxNewTokens: 1 }),
      (e: Error) => e instanceof InvalidOptionError && /seeds\[1\] must be an integer/.test(e.message),
    );
    const withSeeds = await model.generateBatch([[1], [2]], {
      seeds: [8, 9],
      temperature: 1,
      maxNewTokens: 4,
      stopAtEos: false,
    });
    const solo = await model.generate([2], { seed: 9, temperature: 1, maxNewTokens: 4, stopAtEos: false });
    assert.equal([withSeeds.seed, withSeeds.seeds], [8, [8, 9]]);
    assert.equal(withSeeds.sequences[1]!.tokens, solo.sequences[0]!.tokens);
    // perSequence: the shared options overridden per sequence.
    const per = {
      seeds: [8, 9, 10],
      temperature: 1,
      topK: 30,
      maxNewTokens: 6,
      stopAtEos: false,
      perSequence: [{}, { temperature: 0 }, { topK: 0, minP: 0.05, presencePenalty: 1 }],
    };
    const mixed = await model.generateBatch([[1], [2], [3, 4]], per);
    const each = [
      await model.generate([1], { seed: 8, temperature: 1, topK: 30, maxNewTokens: 6, stopAtEos: false }),
      await model.generate([2], { seed: 9, temperature: 0, topK: 30, maxNewTokens: 6, stopAtEos: false }),
      await model.generate([3, 4], {
        seed: 10,
        temperature: 1,
        topK: 0,
        minP: 0.05,
        presencePenalty: 1,
        maxNewTokens: 6,
        stopAtEos: false,
      }),
    ];
    assert.equal(
      mixed.sequences.map((q) => q.tokens),
      each.map((r) => r.sequences[0]!.tokens),
    );
    const badPer = (perSequence: unknown, re: RegExp) =>
      rejects(
        () => model.generateBatch([[1], [2]], { perSequence: perSequence as [], maxNewTokens: 1 }),
        (e: Error) => e instanceof InvalidOptionError && re.test(e.message),
      );
    await badPer([{}], /one options object per sequence \(2\)/);
    await badPer([{}, { seed: 1 }], /perSequence\[1\] has a seed/);
    await badPer([{ temperature: -1 }, {}], /perSequence\[0\]: sampling option temperature = -1/);
    await badPer([{}, { topk: 3 }], /perSequence\[1\]: .*topk/);
    await badPer([{}, 7], /perSequence\[1\] must be an options object/);
    await badPer([{}, { maxNewTokens: -1 }], /perSequence\[1\]: maxNewTokens must be an integer/);
    await badPer([{}, { stopStrings: [''] }], /perSequence\[1\]: stopStrings must be an array of non-empty strings/);
    await badPer([{ maxNewTokens: 0 }, {}], /sequence 0 asks for 0 new tokens while others generate/);
    // Per-sequence new tokens and stop strings: each row stops by its own rules.
    const text1 = (await model.generate([2], { seed: 9, temperature: 1, maxNewTokens: 12, stopAtEos: false }))
      .sequences[0]!.text;
    const stop = text1.slice(4, 6);
    const rules = await model.generateBatch([[1], [2]], {
      seeds: [8, 9],
      temperature: 1,
      maxNewTokens: 12,
      stopAtEos: false,
      perSequence: [{ maxNewTokens: 3 }, { stopStrings: [stop] }],
    });
    const alone0 = await model.generate([1], { seed: 8, temperature: 1, maxNewTokens: 3, stopAtEos: false });
    const alone1 = await model.generate([2], {
      seed: 9,
      temperature: 1,
      maxNewTokens: 12,
      stopAtEos: false,
      stopStrings: [stop],
    });
    assert.equal(rules.sequences, [alone0.sequences[0]!, alone1.sequences[0]!]);
    assert.equal(
      rules.sequences.map((q) => q.finishReason),
      ['length', 'stop'],
    );
  } finally {
    group.destroy();
  }
});

test.run();
