/**
 * Generation behaviour: 4 bytes read back per sequence per step, batched sampling == single runs
 * with derived seeds, streaming, stop strings, cancellation, option validation, no per-token
 * pipeline compilation and no per-token allocation.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { rejects } from './helpers.js';
import { tinyReference } from './fixtures-util.js';
import { tinyModel } from './model-util.js';
import { deriveSeed } from '../src/sampling/options.js';
import { defaultPipelineDepth } from '../src/engine/generate.js';
import { GENERATE_OPTIONS } from '../src/engine/generate-options.js';
import { SAMPLING_OPTIONS } from '../src/sampling/options.js';
import { BEAM_OPTIONS } from '../src/sampling/beam.js';
import { AbortError, InvalidOptionError } from '../src/errors.js';

const ref = tinyReference();

test('the CPU maps at most 4 bytes per sequence per step during a 64-token generation', async () => {
  const model = await tinyModel();
  const proto = Object.getPrototypeOf(
    model.ctx.device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
  );
  const original = proto.mapAsync;
  let bytes = 0;
  let maps = 0;
  proto.mapAsync = function (this: GPUBuffer, mode: number, offset?: number, size?: number) {
    if (mode & GPUMapMode.READ) {
      bytes += size ?? this.size - (offset ?? 0);
      maps++;
    }
    return original.call(this, mode, offset, size);
  };
  try {
    const res = await model.generate(ref.prompts[0]!.ids, {
      temperature: 1,
      seed: 5,
      maxNewTokens: 64,
      stopAtEos: false,
    });
    assert.is(res.sequences[0]!.tokens.length, 64);
    assert.is(maps, 64, 'one read-back per step');
    assert.is(bytes, 64 * 4, `bytes read back: ${bytes}`);
    assert.is(res.stats.readbackBytesPerToken, 4);
  } finally {
    proto.mapAsync = original;
  }
});

test('batched sampling: sequence i equals a single run with seed deriveSeed(seed, i)', async () => {
  const model = await tinyModel();
  const opts = { temperature: 1, topP: 0.9, freqPenalty: 0.3, maxNewTokens: 20, stopAtEos: false };
  const batch = await model.generate(ref.prompts[2]!.ids, { ...opts, seed: 77, numSequences: 5 });
  assert.is(batch.sequences.length, 5);
  for (let i = 0; i < 5; i++) {
    assert.is(batch.seeds[i], deriveSeed(77, i));
    const single = await model.generate(ref.prompts[2]!.ids, { ...opts, seed: deriveSeed(77, i) });
    assert.equal(batch.sequences[i]!.tokens, single.sequences[0]!.tokens, `sequence ${i}`);
  }
  assert.not.equal(batch.sequences[0]!.tokens, batch.sequences[1]!.tokens);
});

test('same seed, same tokens; the seed is reported when none is given', async () => {
  const model = await tinyModel();
  const a = await model.generate('Hello there', { maxNewTokens: 12, stopAtEos: false });
  const b = await model.generate('Hello there', { maxNewTokens: 12, stopAtEos: false, seed: a.seed });
  assert.ok(Number.isInteger(a.seed));
  assert.equal(a.sequences[0]!.tokens, b.sequences[0]!.tokens);
});

test('stream() yields each token as it arrives, and the text adds up', async () => {
  const model = await tinyModel();
  const it = model.stream(ref.prompts[0]!.ids, { temperature: 0, maxNewTokens: 10, stopAtEos: false });
  const toks: number[] = [];
  let text = '';
  while (true) {
    const r = await it.next();
    if (r.done) {
      assert.equal(r.value.sequences[0]!.tokens, toks);
      assert.is(r.value.sequences[0]!.text, text + '');
      break;
    }
    toks.push(r.value.token);
    text += r.value.text;
  }
  assert.equal([...ref.prompts[0]!.ids, ...toks], ref.prompts[0]!.greedy48.slice(0, ref.prompts[0]!.ids.length + 10));
});

test('leaving a stream() loop early cancels the generation and frees its buffers', async () => {
  const model = await tinyModel();
  const before = model.ctx.liveBuffers;
  const submits = model.ctx.stats.submits;
  let n = 0;
  const seen: number[] = [];
  const stream = model.stream(ref.prompts[0]!.ids, {
    maxNewTokens: 300,
    stopAtEos: false,
    seed: 2,
    pipelineDepth: 3,
  });
  for await (const t of stream) {
    seen.push(t.token);
    if (++n === 3) break;
  }
  assert.is(n, 3);
  // 3 steps read, at most pipelineDepth (3, the GPU default) more in flight: nowhere near the 300 asked for.
  assert.ok(model.ctx.stats.submits - submits <= 10, `${model.ctx.stats.submits - submits} submits`);
  assert.equal(model.ctx.liveBuffers, before);
  // The result rejects with AbortError carrying the tokens produced so far (those yielded first).
  const err = await stream.result.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof AbortError, String(err));
  assert.ok(err.tokens.length >= 3 && err.tokens.length < 300, `${err.tokens.length} tokens`);
  assert.equal(err.tokens.slice(0, 3), seen);
  assert.equal(err.sequences.length, 1);
});

test('stream.result: after a for-await loop the finish reason and stats are there (model and session)', async () => {
  const model = await tinyModel();
  const p0 = ref.prompts[0]!.ids;
  const stream = model.stream(p0, { temperature: 0, maxNewTokens: 6, stopAtEos: false });
  const toks: number[] = [];
  for await (const t of stream) toks.push(t.token);
  const res = await stream.result;
  assert.equal(res.sequences[0]!.tokens, toks);
  assert.equal(toks, ref.prompts[0]!.greedy48.slice(p0.length, p0.length + 6));
  assert.is(res.sequences[0]!.finishReason, 'length');
  assert.is(res.stats.steps, 6);
  // Awaiting the result alone (no loop) works too: the generation starts at once.
  const alone = await model.stream(p0, { temperature: 0, maxNewTokens: 6, stopAtEos: false }).result;
  assert.equal(alone.sequences[0]!.tokens, toks);
  const session = await model.createSession();
  try {
    const s = session.stream(p0, { temperature: 0, maxNewTokens: 6, stopAtEos: false });
    const got: number[] = [];
    for await (const t of s) got.push(t.token);
    assert.equal((await s.result).sequences[0]!.tokens, got);
    assert.equal(got, toks);
    assert.is(session.tokens.length, p0.length + 6);
  } finally {
    session.destroy();
  }
});

test('stop strings end a sequence and drop the surplus', async () => {
  const model = await tinyModel();
  const full = await model.generate(ref.prompts[0]!.ids, { temperature: 0, maxNewTokens: 30, stopAtEos: false });
  const text = full.sequences[0]!.text;
  const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
  const cut = await model.generate(ref.prompts[0]!.ids, {
    temperature: 0,
    maxNewTokens: 30,
    stopAtEos: false,
    stopStrings: [stop],
  });
  assert.is(cut.sequences[0]!.finishReason, 'stop');
  assert.ok(cut.sequences[0]!.text.endsWith(stop));
  assert.is(cut.sequences[0]!.text, text.slice(0, text.indexOf(stop) + stop.length));
  assert.ok(cut.sequences[0]!.tokens.length < 30);
});

test('an AbortSignal stops a generation between steps and frees its buffers', async () => {
  const model = await tinyModel();
  const before = model.ctx.liveBuffers;
  const ac = new AbortController();
  let seen = 0;
  const streamed: number[] = [];
  let text = '';
  await rejects(
    () =>
      model.generate(ref.prompts[0]!.ids, {
        maxNewTokens: 500,
        stopAtEos: false,
        pipelineDepth: 3,
        signal: ac.signal,
        onToken: (ev) => {
          streamed.push(ev.token);
          text += ev.text;
          if (++seen === 5) ac.abort();
        },
      }),
    // The error carries the tokens produced before the abort: the 5 the listener saw, and their text.
    (e: Error) =>
      e instanceof AbortError &&
      e.tokens.length === 5 &&
      e.tokens.every((t, i) => t === streamed[i]) &&
      e.text === text &&
      e.sequences[0]!.tokens === e.tokens,
  );
  assert.ok(seen < 500);
  assert.equal(model.ctx.liveBuffers, before);
});

test('pipelines are built once per model: generating compiles nothing new', async () => {
  const model = await tinyModel();
  await model.generate([1, 2, 3], { maxNewTokens: 3, seed: 1 });
  const n = model.ctx.pipelineCount;
  await model.generate([4, 5, 6, 7], { maxNewTokens: 20, seed: 2, topK: 5, topP: 0.5 });
  assert.is(model.ctx.pipelineCount, n);
});

test('firstTokenMs = setupMs (host: cache, plans, bind groups) + prefillMs (submit to ids on the CPU)', async () => {
  const model = await tinyModel();
  const proto = Object.getPrototypeOf(model.ctx.device);
  const original = proto.createBindGroup;
  // Every bind group now costs the host 2 ms: that must land in setupMs, not in prefillMs.
  let calls = 0;
  proto.createBindGroup = function (this: GPUDevice, ...args: unknown[]) {
    calls++;
    const until = performance.now() + 2;
    while (performance.now() < until);
    return original.apply(this, args);
  };
  try {
    const res = await model.generate([5, 6, 7], { maxNewTokens: 1, seed: 3 });
    const s = res.stats;
    assert.ok(calls > 10, `bind groups created: ${calls}`);
    assert.ok(s.setupMs >= 2 * calls, `setupMs ${s.setupMs} for ${calls} slowed bind groups`);
    assert.ok(s.prefillMs > 0 && s.prefillMs < 2 * calls, `prefillMs ${s.prefillMs}`);
    assert.ok(Math.abs(s.firstTokenMs - s.setupMs - s.prefillMs) < 1e-6, JSON.stringify(s));
    const un = await model.generate([5, 6, 7], { maxNewTokens: 1, seed: 3, useCache: false });
    assert.ok(un.stats.setupMs >= 2 && un.stats.prefillMs > 0, JSON.stringify(un.stats));
    assert.ok(Math.abs(un.stats.firstTokenMs - un.stats.setupMs - un.stats.prefillMs) < 1e-6, JSON.stringify(un.stats));
  } finally {
    proto.createBindGroup = original;
  }
});

test('decoding allocates nothing per token: a generation creates the same objects at 4 tokens as at 36', async () => {
  const model = await tinyModel();
  const proto = Object.getPrototypeOf(model.ctx.device);
  // Everything a step could wrongly create; command encoders are expected, one per step.
  const names = [
    'createBuffer',
    'createBindGroup',
    'createShaderModule',
    'createComputePipeline',
    'createComputePipelineAsync',
    'createQuerySet',
    'createCommandEncoder',
  ] as const;
  const originals = names.map((n) => proto[n]);
  const counts = new Map<string, number>();
  names.forEach((n, i) => {
    proto[n] = function (this: GPUDevice, ...args: unknown[]) {
      counts.set(n, (counts.get(n) ?? 0) + 1);
      return originals[i].apply(this, args);
    };
  });
  const kinds = {
    sample: (n: number) => model.generate([1, 2, 3], { maxNewTokens: n, seed: 1, stopAtEos: false }),
    batch: (n: number) =>
      model.generate([1, 2, 3], { maxNewTokens: n, seed: 1, stopAtEos: false, numSequences: 3, topK: 5, topP: 0.9 }),
    beam: (n: number) => model.beamSearch([1, 2, 3], { maxNewTokens: n, numBeams: 3, numReturnSequences: 1 }),
  };
  try {
    for (const [kind, run] of Object.entries(kinds)) {
      const created: Record<string, number>[] = [];
      for (const n of [4, 36]) {
        counts.clear();
        await run(n);
        created.push(Object.fromEntries(names.map((k) => [k, counts.get(k) ?? 0])));
      }
      const [short, long] = created as [Record<string, number>, Record<string, number>];
      assert.ok(short.createBuffer! > 0, `${kind}: the counting hook saw no createBuffer`);
      for (const k of names.filter((k) => k !== 'createCommandEncoder')) {
        assert.is(long[k], short[k], `${kind}: ${k} called ${short[k]} times for 4 tokens, ${long[k]} for 36`);
      }
      assert.is(long.createCommandEncoder! - short.createCommandEncoder!, 32, `${kind}: one command encoder per step`);
    }
  } finally {
    names.forEach((n, i) => (proto[n] = originals[i]));
  }
});

// CPU adapters (lavapipe, where CI runs) decode one step at a time by default and GPUs keep 3 in
// flight: the pipelined loop is checked here against the unpipelined one, scenario by scenario
// (greedy vs transformers, a sampled batch with top-k / top-p, stop strings, EOS, context shifts).
test('pipelined decode (depth 2, 3, 16: the GPU default is 3) gives what depth 1 gives', async () => {
  assert.is(defaultPipelineDepth(true), 1);
  assert.is(defaultPipelineDepth(false), 3);
  const model = await tinyModel();
  const p0 = ref.prompts[0]!.ids;
  const before = model.ctx.liveBuffers;
  const full = await model.generate(p0, { temperature: 0, maxNewTokens: 30, stopAtEos: false, pipelineDepth: 1 });
  const text = full.sequences[0]!.text;
  const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
  const scenarios: Array<[string, (d: number) => Promise<unknown>]> = [
    [
      'greedy 48',
      async (d) =>
        (await model.generate(p0, { temperature: 0, maxNewTokens: 48, stopAtEos: false, pipelineDepth: d }))
          .sequences[0]!.tokens,
    ],
    [
      'sampled batch of 4, top-k / top-p, EOS on',
      async (d) =>
        (
          await model.generateBatch(
            ref.prompts.slice(0, 4).map((p) => p.ids),
            { temperature: 1.2, topK: 40, topP: 0.9, seed: 3, maxNewTokens: 24, pipelineDepth: d },
          )
        ).sequences.map((q) => [q.tokens, q.finishReason]),
    ],
    [
      'stop string',
      async (d) =>
        (
          await model.generate(p0, {
            temperature: 0,
            maxNewTokens: 30,
            stopAtEos: false,
            stopStrings: [stop],
            pipelineDepth: d,
          })
        ).sequences[0]!.text,
    ],
    [
      'context shifts',
      async (d) => {
        const s = await model.createSession({ capacity: 32, keep: 16 });
        try {
          const r = await s.generate(p0, {
            temperature: 1,
            seed: 9,
            maxNewTokens: 80,
            stopAtEos: false,
            pipelineDepth: d,
          });
          assert.ok(r.stats.shifts > 2, `shifts ${r.stats.shifts}`);
          return r.sequences[0]!.tokens;
        } finally {
          s.destroy();
        }
      },
    ],
  ];
  for (const [name, run] of scenarios) {
    const one = await run(1);
    for (const d of [2, 3, 16]) assert.equal(await run(d), one, `${name}, depth ${d}`);
  }
  assert.equal(
    [
      ...p0,
      ...(await model.generate(p0, { temperature: 0, maxNewTokens: 48, stopAtEos: false, pipelineDepth: 3 }))
        .sequences[0]!.tokens,
    ],
    ref.prompts[0]!.greedy48,
  );
  assert.equal(model.ctx.liveBuffers, before);
});

test('generation options are validated before any GPU work', async () => {
  const model = await tinyModel();
  const bad: Array<[object, RegExp]> = [
    [{ maxNewTokens: -1 }, /maxNewTokens/],
    [{ maxNewTokens: 1.5 }, /maxNewTokens/],
    [{ maxNewTokens: 10_000_001 }, /maxNewTokens/],
    [{ numSequences: 0 }, /numSequences/],
    [{ temperature: -1 }, /temperature/],
    [{ temperature: NaN }, /temperature/],
    [{ topP: 1.5 }, /top_?p/i],
    [{ topK: -1 }, /top_?k/i],
    [{ topK: 2.5 }, /top_?k/i],
    [{ stopStrings: [''] }, /stopStrings/],
    [{ pipelineDepth: 0 }, /pipelineDepth/],
    [{ pipelineDepth: 17 }, /pipelineDepth/],
    [{ pipelineDepth: 2.5 }, /pipelineDepth/],
  ];
  for (const [o, re] of bad) {
    await rejects(
      () => model.generate([1], o),
      (e: Error) => e instanceof InvalidOptionError && re.test(e.message),
      JSON.stringify(o),
    );
  }
  const r = await model.generate([1], { maxNewTokens: 0 });
  assert.equal(r.sequences[0]!.tokens, []);
});

test("other libraries' option names are refused with the name to use and every valid option listed", async () => {
  const model = await tinyModel();
  // transformers' generate kwargs, OpenAI's and vLLM's names, typos -> the suggestion.
  const cases: Array<[string, RegExp]> = [
    ['max_new_tokens', /Did you mean maxNewTokens\?/],
    ['max_tokens', /Did you mean maxNewTokens\?/],
    ['max_length', /Did you mean maxNewTokens\? \(it counts new tokens only/],
    ['num_return_sequences', /Did you mean numSequences\?/],
    ['top_k', /Did you mean topK\?/],
    ['top_p', /Did you mean topP\?/],
    ['repetition_penalty', /Did you mean repetitionPenalty\?/],
    ['frequency_penalty', /Did you mean freqPenalty\?/],
    ['logit_bias', /Did you mean logitBias\?/],
    ['stop', /Did you mean stopStrings\?/],
    ['do_sample', /temperature: 0 is greedy/],
    ['num_beams', /model\.beamSearch/],
    ['temprature', /Did you mean temperature\?/],
    ['TopK', /Did you mean topK\?/],
    ['no_repeat_ngram_size', /Did you mean noRepeatNgramSize\?/],
    ['min_tokens', /Did you mean minNewTokens\?/],
    ['stop_token_ids', /Did you mean stopTokenIds\?/],
    ['ignore_eos', /Did you mean stopAtEos\? \(ignore_eos: true is stopAtEos: false\)/],
    ['length_penalty', /Note: it is a beam search option/],
  ];
  for (const [name, re] of cases) {
    await rejects(
      () => model.generate([1], { [name]: 1 } as object),
      (e: Error) => {
        if (!(e instanceof InvalidOptionError) || !re.test(e.message) || !e.message.includes(`"${name}"`)) return false;
        // Every valid option is listed, generation and sampling ones alike.
        const listed = e.message.slice(e.message.indexOf('Valid options: ') + 15).split(/, |\.$/);
        return [...GENERATE_OPTIONS, ...SAMPLING_OPTIONS].every((k) => listed.includes(k));
      },
      name,
    );
  }
  assert.ok(GENERATE_OPTIONS.includes('maxNewTokens') && GENERATE_OPTIONS.includes('temperature'));
  assert.ok(!GENERATE_OPTIONS.includes('joiners'), 'the internal option is not offered');
  // Nothing close: no suggestion, still the list.
  await rejects(
    () => model.generate([1], { frobnicate: true } as object),
    (e: Error) => /"frobnicate"\. Valid options: .*maxNewTokens/.test(e.message) && !/Did you mean/.test(e.message),
  );
  // perSequence entries and beam search name their own options.
  await rejects(
    () => model.generate([1], { numSequences: 2, perSequence: [{}, { max_new_tokens: 2 } as object] }),
    (e: Error) => /perSequence\[1\]: unknown option "max_new_tokens"\. Did you mean maxNewTokens\?/.test(e.message),
  );
  await rejects(
    () => model.beamSearch([1], { numBeams: 2, maxNewTokens: 2, num_return_sequences: 2 } as never),
    (e: Error) =>
      e instanceof InvalidOptionError &&
      /Did you mean numReturnSequences\?/.test(e.message) &&
      BEAM_OPTIONS.every((k) => e.message.includes(k)),
  );
  // Sampling from given logits knows only the sampling options.
  await rejects(
    () => model.sample(new Float32Array(4), 1, { top_p: 0.5 } as object),
    (e: Error) => /unknown sampling option "top_p"\. Did you mean topP\?/.test(e.message),
  );
});

test.run();
