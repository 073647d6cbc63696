/**
 * Faults that cross from one caller to another, or end in garbage (issue 28, items 1-5): GPU errors
 * kept to the call that raised them (sizes past the binding limit refused up front, nothing on
 * stdout); a model destroyed while in use; one session-group turn's failing callback; non-finite
 * weights and a tiny temperature; the cost and the abort of a wide beam search.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { allClose, rejects } from './helpers.js';
import { REPO_ROOT, rejectsWith, tinyCheckpoint, tinyDir, tinyReference } from './fixtures-util.js';
import { engine, tinyModel } from './model-util.js';
import type { Checkpoint } from '../src/engine/checkpoint.js';
import { AbortError, DestroyedError, GPUValidationError, OutOfMemoryError, WeightsFormatError } from '../src/errors.js';

const ref = tinyReference();
const p0 = ref.prompts[0]!;
const greedy = (n: number) => p0.greedy48.slice(p0.ids.length, p0.ids.length + n);

function node(args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, args, {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' },
  });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

/** The tiny checkpoint with `value` written at element `at` of tensor `name`. */
async function poisonedCheckpoint(name: string, at: number, value: number): Promise<Checkpoint> {
  const base = await tinyCheckpoint();
  const poison = (data: Float32Array, offset: number): Float32Array => {
    const i = at - offset;
    if (i >= 0 && i < data.length) data[i] = value;
    return data;
  };
  return {
    ...base,
    has: (n) => base.has(n),
    shape: (n) => base.shape(n),
    read: async (n) => (n === name ? poison(await base.read(n), 0) : base.read(n)),
    readRows: async (n, start, count) => {
      const rows = await base.readRows(n, start, count);
      return n === name ? poison(rows, start * base.shape(n)[1]!) : rows;
    },
  };
}

test('item 4: weights with NaN or Inf are refused at load with WeightsFormatError naming the tensor', async () => {
  const e = await engine();
  for (const [name, at, value] of [
    ['h.1.mlp.c_fc.weight', 77, NaN],
    ['wte.weight', 64 * 50000 + 3, Infinity],
    ['ln_f.bias', 5, -Infinity],
  ] as const) {
    const before = e.ctx.liveBuffers;
    await rejects(
      async () => e.loadModel(await poisonedCheckpoint(name, at, value)),
      (err) =>
        err instanceof WeightsFormatError &&
        err.message.includes(`"${name}"`) &&
        err.message.includes(String(value)) &&
        err.message.includes(`element ${at}`),
      name,
    );
    assert.equal(e.ctx.liveBuffers, before, `${name}: nothing left allocated`);
  }
  // Finite, but infinite once stored as f16.
  await rejects(
    async () => e.loadModel(await poisonedCheckpoint('h.0.attn.c_proj.weight', 9, 70000), { dtype: 'f16' }),
    (err) =>
      err instanceof WeightsFormatError && /"h.0.attn.c_proj.weight" holds 70000 at element 9, past/.test(err.message),
  );
});

test('a Checkpoint the caller built is checked like a file: config, shapes, and what read / readRows return (sizes, type)', async () => {
  const eng = await engine();
  const base = await tinyCheckpoint();
  const live = eng.ctx.liveBuffers;
  const over = (o: Partial<Checkpoint>): Checkpoint => ({ ...base, ...o });
  const cases: Array<[Checkpoint, RegExp]> = [
    [over({ config: { ...base.config, n_head: 3 } }), /config: n_embd 64 is not divisible by n_head 3/],
    [over({ config: undefined as never }), /config: config must be a JSON object, got undefined/],
    [over({ shape: (n) => (n === 'wpe.weight' ? [1024, 65] : base.shape(n)) }), /"wpe.weight" has shape \[1024, 65\]/],
    [
      over({ read: async (n) => (await base.read(n)).subarray(1) }),
      /read\(\) of tensor "[^"]+" must be a Float32Array of \d+ values, got \d+ values/,
    ],
    [
      over({ readRows: async (n, a, c) => (await base.readRows(n, a, c)).subarray(0, 5) }),
      /readRows\(\d+, \d+\) of tensor "wte.weight" must be a Float32Array of \d+ values, got 5 values/,
    ],
    [
      over({ read: async (n) => Array.from(await base.read(n)) as never }),
      /must be a Float32Array of \d+ values, got an array/,
    ],
  ];
  for (const [ck, re] of cases) await rejectsWith(eng.loadModel(ck), WeightsFormatError, re);
  assert.equal(eng.ctx.liveBuffers, live, 'nothing left allocated');
  const ok = await eng.loadModel(over({}));
  assert.equal((await ok.generate(p0.ids, { maxNewTokens: 4, temperature: 0 })).sequences[0]!.tokens, greedy(4));
  ok.destroy();
});

test('item 4: temperature 1e-38 is the greedy limit (x / T would overflow f32)', async () => {
  const model = await tinyModel();
  const n = 12;
  const want = p0.greedy48.slice(p0.ids.length, p0.ids.length + n);
  for (const temperature of [1e-38, 1e-30, 1e-20]) {
    const r = await model.generate(p0.ids, { temperature, maxNewTokens: n, stopAtEos: false, seed: 3 });
    assert.equal(r.sequences[0]!.tokens, want, `temperature ${temperature}`);
  }
});

test('item 2: destroying a model in use rejects every running call with DestroyedError at its next step; no token after', async () => {
  const e = await engine();
  const baseline = e.ctx.liveBuffers;
  const model = await e.loadModel(await tinyCheckpoint());
  const session = await model.createSession();
  let destroyed = false;
  let after = 0;
  let n = 0;
  const count = () => void (destroyed && after++);
  const opts = { maxNewTokens: 300, stopAtEos: false, temperature: 1 };
  const calls = [
    model.generate(p0.ids, {
      ...opts,
      numSequences: 3,
      seed: 1,
      onToken: () => {
        count();
        if (++n === 8) {
          model.destroy();
          destroyed = true;
        }
      },
    }),
    session.generate([1, 2, 3], { ...opts, seed: 2, onToken: count }),
    model.beamSearch(p0.ids, { numBeams: 3, maxNewTokens: 300, eosTokenId: 0 }),
  ];
  const settled = await Promise.allSettled(calls);
  assert.ok(destroyed);
  settled.forEach((r, i) =>
    assert.ok(
      r.status === 'rejected' && r.reason instanceof DestroyedError && /destroyed/.test(String(r.reason.message)),
      `call ${i}: ${r.status === 'rejected' ? String(r.reason) : 'resolved'}`,
    ),
  );
  assert.is(after, 0, 'tokens reached onToken after destroy() returned');
  await rejects(
    () => model.generate([1], { maxNewTokens: 1 }),
    (err) => err instanceof DestroyedError,
  );
  assert.equal(e.ctx.liveBuffers, baseline, 'everything the model and its calls made is freed');
});

test('item 3: session group: a turn whose callback throws fails alone; the merged others get their own tokens', async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(4, { capacity: 64 });
  try {
    const prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]];
    const o = (i: number) => ({ maxNewTokens: 10, stopAtEos: false, temperature: 1, seed: 100 + i });
    const tokenBoom = new Error('user 3: onToken failed');
    const doneBoom = new Error('user 1: onSequenceDone failed');
    let seen3 = 0;
    const turns = group.sessions.map((s, i) =>
      s.generate(prompts[i]!, {
        ...o(i),
        onToken:
          i === 3
            ? () => {
                if (++seen3 === 2) throw tokenBoom;
              }
            : undefined,
        onSequenceDone:
          i === 1
            ? () => {
                throw doneBoom;
              }
            : undefined,
      }),
    );
    const settled = await Promise.allSettled(turns);
    await group.idle();
    const reason = (i: number) => (settled[i]!.status === 'rejected' ? settled[i].reason : 'resolved');
    assert.is(reason(3), tokenBoom, `turn 3: ${String(reason(3))}`);
    assert.is(reason(1), doneBoom, `turn 1: ${String(reason(1))}`);
    const alone = await Promise.all([0, 2].map((i) => model.generate(prompts[i]!, o(i))));
    for (const [k, i] of [0, 2].entries()) {
      const r = settled[i]!;
      assert.ok(r.status === 'fulfilled', `turn ${i}: ${String(reason(i))}`);
      const stats = r.value.stats as unknown as Record<string, number>;
      assert.is(stats.batch_rows ?? stats.batchRows, 4, `turn ${i} ran merged`);
      assert.equal(r.value.sequences[0]!.tokens, alone[k]!.sequences[0]!.tokens, `turn ${i}`);
    }
    // The failed turns' sessions are free again.
    for (const i of [1, 3]) await group.sessions[i]!.generate([5], { maxNewTokens: 2 });
  } finally {
    await group.idle();
    group.destroy();
  }
});

test('async listeners: a rejection fails the call as a throw would (a merged turn alone), never unhandled; the call waits for them, its signal ends the wait', async () => {
  const model = await tinyModel();
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const o = { maxNewTokens: 10, stopAtEos: false, temperature: 0 };
  try {
    // A rejection ends the call with that error, at the listener's next token.
    const boom = new Error('async onToken failed');
    let calls = 0;
    await rejects(
      () =>
        model.generate([1, 2], {
          ...o,
          onToken: async () => {
            if (++calls === 2) throw boom;
          },
        }),
      (e) => e === boom,
      'generate with a rejecting onToken',
    );
    assert.ok(calls < 10, `the run stopped after the rejection (${calls} tokens delivered)`);
    const doneBoom = new Error('async onSequenceDone failed');
    await rejects(
      () =>
        model.generate([1, 2], {
          ...o,
          onSequenceDone: async () => {
            await sleep(5);
            throw doneBoom;
          },
        }),
      (e) => e === doneBoom,
      'generate with a rejecting onSequenceDone',
    );
    // A slow listener: the call resolves once every token's listener has finished.
    let finished = 0;
    const slow = await model.generate([1, 2], {
      ...o,
      onToken: async () => {
        await sleep(20);
        finished++;
      },
    });
    assert.is(finished, slow.sequences[0]!.tokens.length, 'every listener promise settled before the call resolved');
    // A listener that never settles: the call's signal ends the wait, with the sequences it made.
    const ac = new AbortController();
    const hung = model.generate([1, 2], { ...o, signal: ac.signal, onToken: () => new Promise<void>(() => {}) });
    setTimeout(() => ac.abort(), 300);
    await rejects(
      () => hung,
      (e) => e instanceof AbortError && e.tokens.length === 10 && /listeners/.test(e.message),
      'a hung listener and an abort',
    );
    // In a session group a merged turn's rejecting listener fails that turn alone.
    const group = await model.createSessionGroup(2, { capacity: 32 });
    try {
      const turnBoom = new Error('turn 1: async onToken failed');
      const turns = await Promise.allSettled([
        group.sessions[0]!.generate([3, 4], o),
        group.sessions[1]!.generate([5], {
          ...o,
          onToken: async (ev) => {
            if (ev.index === 1) throw turnBoom;
          },
        }),
      ]);
      assert.is(turns[1]!.status === 'rejected' && turns[1].reason, turnBoom);
      const alone = await model.generate([3, 4], o);
      assert.ok(turns[0]!.status === 'fulfilled', 'the other turn resolves');
      assert.equal(turns[0].value.sequences[0]!.tokens, alone.sequences[0]!.tokens);
      assert.is((turns[0].value.stats as { batchRows: number }).batchRows, 2, 'the turns ran merged');
    } finally {
      await group.idle();
      group.destroy();
    }
    await sleep(10);
    assert.equal(unhandled, [], 'no unhandled rejection');
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});

test('item 1: a call past the binding limit rejects with OutOfMemoryError naming what fits; the next call works', async () => {
  const model = await tinyModel();
  const V = model.config.vocab_size;
  const fit = Math.floor(model.ctx.limits.maxStorageBufferBindingSize / (V * 4));
  await rejects(
    () => model.generate([1], { numSequences: 1024, maxNewTokens: 2 }),
    (e) => e instanceof OutOfMemoryError && e.message.includes(`at most ${fit} sequences`),
  );
  const r = await model.generate(p0.ids, { temperature: 0, maxNewTokens: 4, stopAtEos: false });
  assert.equal(r.sequences[0]!.tokens, greedy(4));
  // logits of more positions than one binding holds: computed in parts, returned whole.
  const ids = Array.from({ length: fit + 5 }, (_, i) => (i * 7919) % V);
  const all = await model.logits(ids, { allPositions: true });
  assert.equal(all.shape, [fit + 5, V]);
  const last = await model.logits(ids);
  allClose(all.data.subarray((fit + 4) * V), last.data, { atol: 1e-4, rtol: 1e-4 }, 'last position');
  const first = await model.logits(ids.slice(0, 1));
  allClose(all.data.subarray(0, V), first.data, { atol: 1e-4, rtol: 1e-4 }, 'first position');
});

test("item 1: a GPU error goes to the call that caused it, never to another caller's", async () => {
  const model = await tinyModel();
  const broken = await model.createSession();
  const fine = await model.createSession();
  try {
    // Behind the engine's back: every step of `broken` now submits a destroyed buffer.
    broken.cache.k[0]!.destroy();
    const [bad, good] = await Promise.allSettled([
      broken.generate([1, 2, 3], { maxNewTokens: 200, stopAtEos: false }),
      fine.generate(p0.ids, { temperature: 0, maxNewTokens: 4, stopAtEos: false }),
    ]);
    assert.ok(good.status === 'fulfilled', `the other call: ${good.status === 'rejected' ? good.reason : ''}`);
    assert.equal(good.value.sequences[0]!.tokens, greedy(4));
    assert.ok(
      bad.status === 'rejected' && bad.reason instanceof GPUValidationError && /destroyed/.test(bad.reason.message),
      `the failing call: ${bad.status === 'rejected' ? bad.reason : 'resolved'}`,
    );
    const next = await fine.generate([5], { temperature: 0, maxNewTokens: 2 });
    assert.is(next.sequences[0]!.tokens.length, 2);
  } finally {
    broken.destroy();
    fine.destroy();
  }
});

test('item 1: nothing from Dawn reaches stdout (CLI --json past the limit; an uncaptured error)', () => {
  const bin = join(REPO_ROOT, 'bin', 'gpt2-webgpu.js');
  const cli = node([bin, 'generate', '--model', tinyDir(), '--ids', '1', '--num-sequences', '1024', '--json']);
  assert.is(cli.code, 1, cli.err);
  assert.is(cli.out, '', 'stdout');
  assert.match(cli.err, /OutOfMemoryError: .*at most \d+ sequences/);
  const script = `
    import { nodeContext } from ${JSON.stringify(join(REPO_ROOT, 'dist', 'src', 'node.js'))};
    const ctx = await nodeContext();
    ctx.device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE });
    await ctx.device.queue.onSubmittedWorkDone();
    await new Promise((r) => setTimeout(r, 50));
    console.log(JSON.stringify({ uncaptured: ctx.uncapturedErrors.length }));
    ctx.destroy();`;
  const raw = node(['--input-type=module', '-e', script]);
  assert.is(raw.code, 0, raw.err);
  assert.is(raw.out, '{"uncaptured":1}\n');
});

test('item 5: beam search: 256 beams cost a few times 64 beams per step (not 120x); an abort mid-step rejects at once', async () => {
  const model = await tinyModel();
  const o = { maxNewTokens: 3, numReturnSequences: 1 };
  const time = async (numBeams: number) => {
    const t0 = performance.now();
    await model.beamSearch([1, 2, 3], { ...o, numBeams });
    return performance.now() - t0;
  };
  await time(64); // pipelines and plans warm
  const t64 = await time(64);
  const t256 = await time(256);
  assert.ok(t256 < 20 * t64, `256 beams took ${t256.toFixed(0)} ms, 64 beams ${t64.toFixed(0)} ms`);
  const ac = new AbortController();
  let aborted = 0;
  setTimeout(() => {
    aborted = performance.now();
    ac.abort();
  }, 150);
  const opts = { numBeams: 256, numReturnSequences: 256, maxNewTokens: 40, signal: ac.signal };
  await rejects(
    () => model.beamSearch([1, 2, 3], opts),
    (e) => e instanceof AbortError,
  );
  const late = performance.now() - aborted;
  assert.ok(aborted > 0 && late < 1000, `rejected ${late.toFixed(0)} ms after the abort`);
});

test.run();
