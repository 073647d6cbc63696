/**
 * Log-probabilities during generation (GenerateOptions.logprobs) on the tiny fixture: the chosen
 * tokens' raw log-probs equal model.score of prompt + completion and a float64 log-softmax of the
 * model's logits, the processed log-probs a float64 transcription of the processors on that step's
 * logits, the top-N the float64 top-N; the same with pipelining, batches, the uncached mode,
 * streams and session-group runs (merged and joining); nothing more read back with it off.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { allClose, rejects } from './helpers.js';
import { rejectsWith, tinyReference } from './fixtures-util.js';
import { tinyModel } from './model-util.js';
import { logprobs64 } from './reference/logprobs.js';
import { AbortError, InvalidOptionError } from '../src/errors.js';
import type { GenerateOptions, GeneratedSequence, TokenLogprob } from '../src/engine/generate.js';

const ref = tinyReference();
const V = 50257;
const PROMPT = ref.prompts[1]!.ids; // 12 tokens

type Model = Awaited<ReturnType<typeof tinyModel>>;

/** The processors the tests use, as the sampler applies them (docs/API.md's order). */
interface Procs {
  temperature: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  freqPenalty?: number;
  presencePenalty?: number;
}

/** float64 log-prob of `tok` under the processed distribution of logits `x` [V] with `seen` counts. */
function processed64(x: Float32Array, o: Procs, seen: Map<number, number>, tok: number): number {
  const z = Array.from(x, (v, id) => {
    const c = seen.get(id) ?? 0;
    let y = v;
    const rep = o.repetitionPenalty ?? 1;
    if (c > 0 && rep !== 1) y = y < 0 ? y * rep : y / rep;
    if (o.temperature > 0) y /= o.temperature;
    if (c > 0) y -= (o.freqPenalty ?? 0) * c + (o.presencePenalty ?? 0);
    return y;
  });
  let kept = z.map(() => true);
  if (o.temperature > 0 && (o.topK ?? 0) > 0) {
    const kth = [...z].sort((a, b) => b - a)[o.topK! - 1]!;
    kept = z.map((y) => y >= kth);
  }
  const top = Math.max(...z.filter((_, i) => kept[i]));
  if (o.temperature > 0 && o.topP !== undefined) {
    // The smallest prefix (z descending, id ascending) of the kept tokens whose mass reaches p.
    const order = z.map((y, id) => ({ y, id })).filter((e) => kept[e.id]);
    order.sort((a, b) => b.y - a.y || a.id - b.id);
    const total = order.reduce((t, e) => t + Math.exp(e.y - top), 0);
    let cum = 0;
    const inP = new Set<number>();
    for (const e of order) {
      inP.add(e.id);
      cum += Math.exp(e.y - top) / total;
      if (cum >= o.topP) break;
    }
    kept = kept.map((k, id) => k && inP.has(id));
  }
  if (o.temperature > 0 && o.minP !== undefined) kept = kept.map((k, id) => k && Math.exp(z[id]! - top) >= o.minP!);
  assert.ok(kept[tok], `token ${tok} was drawn from outside the kept set`);
  const m = Math.max(...z.filter((_, i) => kept[i]));
  let s = 0;
  z.forEach((y, i) => {
    if (kept[i]) s += Math.exp(y - m);
  });
  return z[tok]! - m - Math.log(s);
}

/**
 * Checks one sequence's logprobs against model.score of prompt + completion and the float64
 * log-softmax (and processed transcription) of model.logits over every position.
 */
async function checkSequence(model: Model, prompt: number[], seq: GeneratedSequence, o: Procs, top: number) {
  const toks = seq.tokens;
  const lps = seq.logprobs!;
  assert.is(lps.length, toks.length, 'one entry per token');
  const all = [...prompt, ...toks];
  const score = await model.score(all, { top });
  const scored = score.tokens.slice(prompt.length - 1);
  allClose(
    lps.map((l) => l.logprob),
    scored.map((t) => t.logprob),
    { atol: 1e-4 },
    'raw log-probs vs model.score',
  );
  const P = prompt.length;
  const logits = (await model.logits(all.slice(0, -1), { allPositions: true })).data;
  const rows = logits.subarray((P - 1) * V);
  const ref64 = logprobs64(rows, toks.length, V, toks, top);
  const seen = new Map<number, number>();
  for (const t of prompt) seen.set(t, (seen.get(t) ?? 0) + 1);
  toks.forEach((tok, k) => {
    const l = lps[k]!;
    const e = ref64[k]!;
    allClose([l.logprob], [e.logprob], { atol: 1e-4 }, `token ${k} raw log-prob vs float64`);
    assert.is(l.greedy, e.argmax === tok, `token ${k} greedy flag`);
    if (top === 0) assert.not.ok('top' in l, 'no alternatives with logprobs 0');
    else {
      assert.equal(
        l.top!.map((a) => a.id),
        e.top.map((a) => a.id),
        `token ${k} top ids`,
      );
      allClose(
        l.top!.map((a) => a.logprob),
        e.top.map((a) => a.logprob),
        { atol: 1e-4 },
        `token ${k} top log-probs`,
      );
    }
    const want = processed64(rows.subarray(k * V, (k + 1) * V), o, seen, tok);
    allClose([l.processedLogprob], [want], { atol: 1e-4 }, `token ${k} processed log-prob`);
    seen.set(tok, (seen.get(tok) ?? 0) + 1);
  });
}

const SAMPLED: Procs & GenerateOptions = { temperature: 0.8, topK: 40, seed: 11, stopAtEos: false };

test('greedy: raw log-probs equal model.score and float64; processed = raw (nothing processed); top-5; greedy flags', async () => {
  const model = await tinyModel();
  const r = await model.generate(PROMPT, { temperature: 0, maxNewTokens: 10, stopAtEos: false, logprobs: 5 });
  const seq = r.sequences[0]!;
  assert.ok(seq.logprobs!.every((l) => l.greedy));
  await checkSequence(model, PROMPT, seq, { temperature: 0 }, 5);
});

test('sampling (temperature 0.8, top-k 40): raw vs model.score and float64, processed vs float64 processors, top-3', async () => {
  const model = await tinyModel();
  const r = await model.generate(PROMPT, { ...SAMPLED, maxNewTokens: 12, logprobs: 3 });
  const seq = r.sequences[0]!;
  // Sampling at 0.8 over 40 tokens does not always take the argmax.
  assert.ok(
    seq.logprobs!.some((l) => !l.greedy),
    'some token is not the greedy one',
  );
  assert.ok(
    seq.logprobs!.some((l) => l.processedLogprob > l.logprob + 0.05),
    'processing changed the distribution',
  );
  await checkSequence(model, PROMPT, seq, SAMPLED, 3);
  // Logprobs change no token.
  const off = await model.generate(PROMPT, { ...SAMPLED, maxNewTokens: 12 });
  assert.equal(off.sequences[0]!.tokens, seq.tokens);
  assert.not.ok('logprobs' in off.sequences[0]!);
});

test('penalties: repetition and frequency penalties, greedy and sampled, in the processed log-probs', async () => {
  const model = await tinyModel();
  const pen = { repetitionPenalty: 1.5, freqPenalty: 0.7, presencePenalty: 0.3 };
  const g = await model.generate(PROMPT, { temperature: 0, ...pen, maxNewTokens: 8, stopAtEos: false, logprobs: 0 });
  await checkSequence(model, PROMPT, g.sequences[0]!, { temperature: 0, ...pen }, 0);
  const s = await model.generate(PROMPT, { ...SAMPLED, ...pen, maxNewTokens: 8, logprobs: 0 });
  await checkSequence(model, PROMPT, s.sequences[0]!, { ...SAMPLED, ...pen }, 0);
});

test('top-p and min-p: the processed log-probs renormalise over the tokens they keep', async () => {
  const model = await tinyModel();
  for (const cut of [{ topP: 0.6 }, { minP: 0.3 }, { topK: 30, topP: 0.8, minP: 0.1 }]) {
    const o = { temperature: 0.7, ...cut };
    const r = await model.generate(PROMPT, { ...o, seed: 3, maxNewTokens: 8, stopAtEos: false, logprobs: 0 });
    await checkSequence(model, PROMPT, r.sequences[0]!, o, 0);
  }
});

test('pipelining (3 steps in flight), a batch of 3 and the uncached mode give the same tokens and log-probs', async () => {
  const model = await tinyModel();
  const o = { ...SAMPLED, maxNewTokens: 9, logprobs: 4 };
  const one = await model.generate(PROMPT, { ...o, pipelineDepth: 1 });
  const piped = await model.generate(PROMPT, { ...o, pipelineDepth: 3 });
  const uncached = await model.generate(PROMPT, { ...o, useCache: false });
  const batch = await model.generate(PROMPT, { ...o, seed: undefined, seeds: [5, 11, 8], numSequences: 3 });
  const same = (a: GeneratedSequence, b: GeneratedSequence, what: string) => {
    assert.equal(a.tokens, b.tokens, `${what} tokens`);
    const flat = (s: GeneratedSequence) =>
      s.logprobs!.flatMap((l: TokenLogprob) => [l.logprob, l.processedLogprob, ...l.top!.map((t) => t.logprob)]);
    allClose(flat(a), flat(b), { atol: 1e-4 }, `${what} log-probs`);
    assert.equal(
      a.logprobs!.map((l) => [l.greedy, ...l.top!.map((t) => t.id)]),
      b.logprobs!.map((l) => [l.greedy, ...l.top!.map((t) => t.id)]),
      `${what} greedy flags and top ids`,
    );
  };
  same(piped.sequences[0]!, one.sequences[0]!, 'pipelined');
  same(uncached.sequences[0]!, one.sequences[0]!, 'uncached');
  same(batch.sequences[1]!, one.sequences[0]!, 'batch row 1 (seed 11)');
  await checkSequence(model, PROMPT, batch.sequences[0]!, SAMPLED, 4);
  await checkSequence(model, PROMPT, batch.sequences[2]!, SAMPLED, 4);
  // generateBatch with prompts of other lengths.
  const gb = await model.generateBatch([PROMPT.slice(0, 5), PROMPT], { ...o, seed: undefined, seeds: [3, 11] });
  same(gb.sequences[1]!, one.sequences[0]!, 'generateBatch row 1');
  await checkSequence(model, PROMPT.slice(0, 5), gb.sequences[0]!, SAMPLED, 4);
});

test('read-back per token: 4 bytes with logprobs off, 4 x (4 + 2N) with logprobs N', async () => {
  const model = await tinyModel();
  const o = { ...SAMPLED, maxNewTokens: 16 };
  const off = await model.generate(PROMPT, o);
  assert.is(off.stats.readbackBytesPerToken, 4);
  const offBatch = await model.generate(PROMPT, { ...o, numSequences: 2 });
  assert.is(offBatch.stats.readbackBytesPerToken, 4);
  for (const n of [0, 5, 20]) {
    const on = await model.generate(PROMPT, { ...o, logprobs: n });
    assert.is(on.stats.readbackBytesPerToken, 4 * (4 + 2 * n), `logprobs ${n}`);
  }
});

test('stream token events carry the log-probs of the result; AbortError carries those so far', async () => {
  const model = await tinyModel();
  const stream = model.stream(PROMPT, { ...SAMPLED, maxNewTokens: 6, logprobs: 2 });
  const events: Array<TokenLogprob | undefined> = [];
  for await (const ev of stream) events.push(ev.logprob);
  const { sequences } = await stream.result;
  assert.equal(events, sequences[0]!.logprobs);
  const plain = model.stream(PROMPT, { ...SAMPLED, maxNewTokens: 2 });
  for await (const ev of plain) assert.not.ok('logprob' in ev);
  const ac = new AbortController();
  const got: number[] = [];
  const err = await rejectsWith(
    model.generate(PROMPT, {
      ...SAMPLED,
      maxNewTokens: 50,
      logprobs: 0,
      signal: ac.signal,
      onToken: (ev) => {
        got.push(ev.token);
        if (got.length === 3) ac.abort();
      },
    }),
    AbortError,
    /aborted/,
  );
  const seq = (err as AbortError).sequences[0]!;
  assert.is(seq.logprobs!.length, seq.tokens.length);
  assert.equal(seq.tokens, got);
});

test('session group: merged turns and a joiner get the log-probs they get alone', async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(3, { capacity: 64 });
  const alone = await model.createSession({ capacity: 64 });
  const turn = (seed: number, n: number): GenerateOptions => ({ ...SAMPLED, seed, maxNewTokens: n, logprobs: 3 });
  try {
    let joined: Promise<unknown> | undefined;
    const prompts = [PROMPT.slice(0, 4), PROMPT.slice(0, 7), PROMPT.slice(2, 9)];
    const runs = await Promise.all([
      group.sessions[0]!.generate(prompts[0]!, turn(1, 3)).then((r) => {
        group.sessions[0]!.reset();
        joined = group.sessions[0]!.generate(PROMPT, turn(4, 5));
        return r;
      }),
      group.sessions[1]!.generate(prompts[1]!, turn(2, 14)),
      group.sessions[2]!.generate(prompts[2]!, turn(3, 6)),
    ]);
    const j = (await joined) as (typeof runs)[0];
    assert.equal(
      [...runs, j].map((r) => r.stats.batchRows),
      [3, 3, 3, 3],
      'merged, and the fourth turn joined',
    );
    const check = async (got: GeneratedSequence, prompt: number[], opts: GenerateOptions, what: string) => {
      alone.reset();
      const want = (await alone.generate(prompt, opts)).sequences[0]!;
      assert.equal(got.tokens, want.tokens, `${what} tokens`);
      assert.equal(
        got.logprobs!.map((l) => [l.greedy, ...l.top!.map((t) => t.id)]),
        want.logprobs!.map((l) => [l.greedy, ...l.top!.map((t) => t.id)]),
        `${what} flags and top ids`,
      );
      allClose(
        got.logprobs!.flatMap((l) => [l.logprob, l.processedLogprob]),
        want.logprobs!.flatMap((l) => [l.logprob, l.processedLogprob]),
        { atol: 1e-4 },
        `${what} log-probs`,
      );
    };
    for (const [i, r] of runs.entries())
      await check(r.sequences[0]!, prompts[i]!, turn(i + 1, [3, 14, 6][i]!), `turn ${i}`);
    await check(j.sequences[0]!, PROMPT, turn(4, 5), 'joiner');
    // Turns asking for other logprobs do not merge with these (their runs read back other sizes).
    const mixed = await Promise.all([
      group.sessions[0]!.generate([5], turn(1, 2)),
      group.sessions[1]!.generate([6], { ...turn(2, 2), logprobs: undefined }),
    ]);
    assert.equal(
      mixed.map((r) => r.stats.batchRows),
      [1, 1],
    );
    assert.ok(mixed[0]!.sequences[0]!.logprobs && !mixed[1]!.sequences[0]!.logprobs);
  } finally {
    await group.idle();
    group.destroy();
    alone.destroy();
  }
});

test('logprobs is validated before any GPU work; other libraries’ names point to it', async () => {
  const model = await tinyModel();
  for (const bad of [-1, 21, 1.5, '3', true])
    await rejects(
      () => model.generate(PROMPT, { logprobs: bad as never }),
      (e) => e instanceof InvalidOptionError && /logprobs must be an integer in \[0, 20\]/.test(e.message),
    );
  await rejects(
    () => model.generate(PROMPT, { top_logprobs: 3 } as never),
    (e) => e instanceof InvalidOptionError && /Did you mean logprobs\?/.test(e.message),
  );
});

test.run();
