/**
 * Generation options with transformers' semantics, on the tiny HF fixture's greedy paths:
 * noRepeatNgramSize, badWordsIds, suppressTokens, minNewTokens, eosTokenId, stopTokenIds and
 * includeStopString. Each is checked where it changes the argmax: the expected token is the
 * runner-up of transformers' own top-5 at that step (the fixture), and every step after it equals
 * a host oracle (model.logits of the whole sequence, the bans of test/reference/sampling.ts's
 * literal transcription of transformers' processors, argmax).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { fixturesDir, tinyReference } from './fixtures-util.js';
import { engine, tinyModel } from './model-util.js';
import { createEngine } from '../src/node.js';
import { join } from 'node:path';
import { bans64 } from './reference/sampling.js';
import type { Model } from '../src/engine/engine.js';
import type { GenerateOptions } from '../src/engine/generate-options.js';
import { InvalidOptionError } from '../src/errors.js';
import { rejects } from './helpers.js';

const ref = tinyReference();
const P2 = ref.prompts[2]!; // its greedy path repeats the bigram (42846, 33118)
const greedyOf = (p: typeof P2) => p.greedy48.slice(p.ids.length);
/** The i-th best id of transformers' raw logits at greedy step `step` (0: the greedy token). */
const topId = (p: typeof P2, step: number, i: number) => p.greedy48_step_top5[step]![0][i]!;

type Bans = Partial<{
  noRepeatNgramSize: number;
  badWordsIds: number[][];
  suppressTokens: number[];
  minNewTokens: number;
}>;

/**
 * Greedy decoding on the host: model.logits of the whole sequence at every step, transformers'
 * bans (bans64; the stop ids held back like EOS while fewer than minNewTokens), argmax with ties
 * to the smaller id; it stops at an EOS or stop id.
 */
async function oracle(
  model: Model,
  prompt: number[],
  n: number,
  bans: Bans,
  eosIds: number[] = [model.config.eos_token_id],
  stopIds: number[] = [],
): Promise<number[]> {
  const o = { noRepeatNgramSize: 0, badWordsIds: [], suppressTokens: [], minNewTokens: 0, ...bans };
  const out: number[] = [];
  while (out.length < n) {
    const h = [...prompt, ...out];
    const { data } = await model.logits(h);
    const banned = bans64(h, o, eosIds, out.length);
    if (out.length < o.minNewTokens) for (const s of stopIds) banned.add(s);
    let best = -1;
    for (let v = 0; v < data.length; v++) if (!banned.has(v) && (best < 0 || data[v]! > data[best]!)) best = v;
    out.push(best);
    if (eosIds.includes(best) || stopIds.includes(best)) break;
  }
  return out;
}

const greedy = (o: GenerateOptions): GenerateOptions => ({ temperature: 0, stopAtEos: false, ...o });

test('noRepeatNgramSize: the repeated bigram is banned where transformers would ban it; pipelined, uncached, batched and session runs agree', async () => {
  const model = await tinyModel();
  const g = greedyOf(P2);
  // Hand check on the fixture: steps 4-5 emit (42846, 33118) and step 8 emits 42846 again, so at
  // step 9 size 2 bans 33118 (and 15170, which followed 42846 at step 3); the top-5's runner-up wins.
  assert.equal([g[2], g[3], g[4], g[5], g[8], g[9]], [42846, 15170, 42846, 33118, 42846, 33118]);
  const runnerUp = [1, 2, 3, 4].map((i) => topId(P2, 9, i)).find((t) => t !== 33118 && t !== 15170)!;
  const n = 16;
  const res = await model.generate(P2.ids, greedy({ maxNewTokens: n, noRepeatNgramSize: 2 }));
  const got = res.sequences[0]!.tokens;
  assert.equal(got.slice(0, 9), g.slice(0, 9), 'the greedy path until the ban');
  assert.is(got[9], runnerUp, 'step 9: the runner-up of transformers top-5');
  assert.equal(got, await oracle(model, P2.ids, n, { noRepeatNgramSize: 2 }), 'every step: the host oracle');
  // Size 3: no trigram of the plain path repeats within 24 tokens, so nothing changes; size 1: no id
  // of prompt + output may come again.
  const three = await model.generate(P2.ids, greedy({ maxNewTokens: 24, noRepeatNgramSize: 3 }));
  assert.equal(three.sequences[0]!.tokens, g.slice(0, 24));
  const one = (await model.generate(P2.ids, greedy({ maxNewTokens: n, noRepeatNgramSize: 1 }))).sequences[0]!.tokens;
  one.forEach((t, i) => assert.not.ok([...P2.ids, ...one.slice(0, i)].includes(t), `size 1, step ${i}`));
  assert.equal(one, await oracle(model, P2.ids, n, { noRepeatNgramSize: 1 }));
  // A pipelined request (forced to one step at a time), the uncached mode, a batch and a session
  // (whose context counts as the prompt's ids) give the same tokens.
  for (const o of [{ pipelineDepth: 3 }, { useCache: false }, { numSequences: 2, pipelineDepth: 2 }]) {
    const r = await model.generate(P2.ids, greedy({ maxNewTokens: n, noRepeatNgramSize: 2, ...o }));
    for (const q of r.sequences) assert.equal(q.tokens, got, JSON.stringify(o));
  }
  const session = await model.createSession();
  try {
    // Turn 1 leaves prompt + g0..g4 as the context; turn 2's prompt is g5: the same ids as the
    // one-shot run's at step 6, so the bans (and tokens) from there on are the same.
    await session.generate(P2.ids, greedy({ maxNewTokens: 5 }));
    const r = await session.generate([g[5]!], greedy({ maxNewTokens: n - 6, noRepeatNgramSize: 2 }));
    assert.equal(r.sequences[0]!.tokens, got.slice(6), 'a session: the context is part of the ids');
  } finally {
    session.destroy();
  }
});

test('badWordsIds: a two-token sequence bans its last token after its first; one-token ones always', async () => {
  const model = await tinyModel();
  const g = greedyOf(P2);
  const n = 12;
  // [g0, g1]: after g0, g1 is banned at step 1 -> transformers' runner-up there.
  const two = await model.generate(P2.ids, greedy({ maxNewTokens: n, badWordsIds: [[g[0]!, g[1]!]] }));
  const t = two.sequences[0]!.tokens;
  assert.is(t[0], g[0]);
  assert.is(t[1], topId(P2, 1, 1));
  assert.equal(t, await oracle(model, P2.ids, n, { badWordsIds: [[g[0]!, g[1]!]] }));
  // A sequence whose prefix never matches changes nothing; a one-token one is never produced.
  const none = await model.generate(P2.ids, greedy({ maxNewTokens: n, badWordsIds: [[g[1]!, g[0]!]] }));
  assert.equal(none.sequences[0]!.tokens, g.slice(0, n));
  const one = await model.generate(P2.ids, greedy({ maxNewTokens: n, badWordsIds: [[42846]] }));
  assert.not.ok(one.sequences[0]!.tokens.includes(42846));
  assert.equal(one.sequences[0]!.tokens, await oracle(model, P2.ids, n, { badWordsIds: [[42846]] }));
});

test('suppressTokens: never produced; the first step takes the runner-up', async () => {
  const model = await tinyModel();
  const g = greedyOf(P2);
  const r = await model.generate(P2.ids, greedy({ maxNewTokens: 10, suppressTokens: [g[0]!], pipelineDepth: 3 }));
  const t = r.sequences[0]!.tokens;
  assert.is(t[0], topId(P2, 0, 1));
  assert.not.ok(t.includes(g[0]!));
  assert.equal(t, await oracle(model, P2.ids, 10, { suppressTokens: [g[0]!] }));
});

test('eosTokenId ends a sequence; minNewTokens holds it (and stop token ids) back until that many tokens', async () => {
  const model = await tinyModel();
  const p = ref.prompts[0]!;
  const g = greedyOf(p);
  const eos = g[2]!; // the greedy path reaches it at step 2
  const plain = await model.generate(p.ids, { temperature: 0, maxNewTokens: 10, eosTokenId: eos });
  const q = plain.sequences[0]!;
  assert.equal([q.tokens, q.finishReason], [g.slice(0, 3), 'eos']);
  assert.is(q.text, model.tokenizer.decode(g.slice(0, 2)), "EOS's text is left out");
  // An array: any of them ends it.
  const arr = await model.generate(p.ids, { temperature: 0, maxNewTokens: 10, eosTokenId: [50256, g[1]!] });
  assert.equal(arr.sequences[0]!.tokens, g.slice(0, 2));
  // minNewTokens 3: EOS is banned at steps 0-2, so step 2 takes transformers' runner-up; with 2 it
  // is allowed at step 2 again (the boundary both ways). GPU-side: no pipelining given up.
  for (const [min, depth] of [
    [3, 1],
    [3, 3],
    [2, 3],
  ] as const) {
    const held = await model.generate(p.ids, {
      temperature: 0,
      maxNewTokens: 12,
      eosTokenId: eos,
      minNewTokens: min,
      pipelineDepth: depth,
    });
    const t = held.sequences[0]!.tokens;
    if (min === 3) assert.is(t[2], topId(p, 2, 1), `depth ${depth}`);
    else assert.equal(t, g.slice(0, 3), 'minNewTokens 2: EOS at step 2');
    assert.equal(t, await oracle(model, p.ids, 12, { minNewTokens: min }, [eos]), `min ${min}, depth ${depth}`);
  }
  // Stop token ids are held back too (and not counted as EOS).
  const stop = await model.generate(p.ids, greedy({ maxNewTokens: 12, stopTokenIds: [eos], minNewTokens: 3 }));
  assert.is(stop.sequences[0]!.tokens[2], topId(p, 2, 1));
  assert.equal(stop.sequences[0]!.tokens, await oracle(model, p.ids, 12, { minNewTokens: 3 }, [50256], [eos]));
});

test('stopTokenIds end a sequence (finishReason stop); includeStopString keeps or drops what stopped it', async () => {
  const model = await tinyModel();
  const p = ref.prompts[0]!;
  const g = greedyOf(p);
  const dec = (ids: number[]) => model.tokenizer.decode(ids);
  const kept = await model.generate(p.ids, greedy({ maxNewTokens: 20, stopTokenIds: [g[3]!] }));
  assert.equal(kept.sequences[0]!.tokens, g.slice(0, 4));
  assert.is(kept.sequences[0]!.finishReason, 'stop');
  assert.is(kept.sequences[0]!.text, dec(g.slice(0, 4)), 'default: the stop token is in the text');
  const dropped = await model.generate(
    p.ids,
    greedy({ maxNewTokens: 20, stopTokenIds: [g[3]!], includeStopString: false, pipelineDepth: 3 }),
  );
  assert.equal(dropped.sequences[0]!.tokens, g.slice(0, 4), 'tokens keep every token drawn');
  assert.is(dropped.sequences[0]!.text, dec(g.slice(0, 3)));
  // Stop strings: the text ends with the stop string by default, before it with includeStopString false.
  const full = dec(g.slice(0, 20));
  const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
  const at = full.indexOf(stop);
  const withStop = await model.generate(p.ids, greedy({ maxNewTokens: 20, stopStrings: [stop] }));
  assert.is(withStop.sequences[0]!.text, full.slice(0, at + stop.length));
  const without = await model.generate(
    p.ids,
    greedy({ maxNewTokens: 20, stopStrings: [stop], includeStopString: false }),
  );
  assert.is(without.sequences[0]!.text, full.slice(0, at));
  assert.is(without.sequences[0]!.finishReason, 'stop');
});

test('session group: turns with different bans share steps and each gets what it gets alone', async () => {
  const model = await tinyModel();
  const g = greedyOf(P2);
  const opts: GenerateOptions[] = [
    greedy({ maxNewTokens: 14, noRepeatNgramSize: 2 }),
    greedy({ maxNewTokens: 10, suppressTokens: [g[0]!], stopTokenIds: [g[5]!] }),
    greedy({ maxNewTokens: 12, pipelineDepth: 1 }),
  ];
  const alone: number[][] = [];
  for (const o of opts) alone.push((await model.generate(P2.ids, o)).sequences[0]!.tokens);
  const group = await model.createSessionGroup(3);
  try {
    const res = await Promise.all(group.sessions.map((s, i) => s.generate(P2.ids, opts[i])));
    res.forEach((r, i) => assert.equal(r.sequences[0]!.tokens, alone[i], `turn ${i}`));
    assert.ok(
      res.some((r) => r.stats.batchRows > 1),
      `merged: ${res.map((r) => r.stats.batchRows)}`,
    );
  } finally {
    await group.idle();
    group.destroy();
  }
});

test('the new options are validated before any GPU work', async () => {
  const model = await tinyModel();
  const bad: Array<[object, RegExp]> = [
    [{ noRepeatNgramSize: -1 }, /noRepeatNgramSize/],
    [{ minNewTokens: 0.5 }, /minNewTokens/],
    [{ suppressTokens: [50257] }, /suppressTokens\[0\]/],
    [{ badWordsIds: [[]] }, /badWordsIds\[0\]/],
    [{ stopTokenIds: [-1] }, /stopTokenIds\[0\]/],
    [{ eosTokenId: [] }, /eosTokenId/],
    [{ eosTokenId: 1e9 }, /eosTokenId\[0\]/],
    [{ includeStopString: 'no' }, /includeStopString must be a boolean/],
    [{ signal: {} }, /^signal must be an AbortSignal/],
    [{ numSequences: 2, perSequence: [{}, { stopTokenIds: [1.5] }] }, /perSequence\[1\]: .*stopTokenIds\[0\]/],
  ];
  for (const [o, re] of bad) {
    await rejects(
      () => model.generate([1], o),
      (e: Error) => e instanceof InvalidOptionError && re.test(e.message),
      JSON.stringify(o),
    );
  }
});

test('every call checks its options object first: null, an array, a number or a misspelt name is an InvalidOptionError naming it, and nothing is created', async () => {
  const model = await tinyModel();
  const eng = await engine();
  const session = await model.createSession();
  const group = await model.createSessionGroup(2);
  const fixture = join(fixturesDir(), 'hf-gpt2-tiny');
  // [what, call with the options given]; `options` names the options in the message.
  const calls: Array<[string, string, (o: unknown) => Promise<unknown>]> = [
    ['generate', 'generation option', (o) => model.generate([1], o as never)],
    ['generateBatch', 'generation option', (o) => model.generateBatch([[1]], o as never)],
    ['stream', 'generation option', async (o) => model.stream([1], o as never).result],
    ['score', 'score option', (o) => model.score([1, 2], o as never)],
    ['perplexity', 'perplexity option', (o) => model.perplexity([1, 2, 3], o as never)],
    ['beamSearch', 'beam search option', (o) => model.beamSearch([1], o as never)],
    ['logits', 'logits option', (o) => model.logits([1], o as never)],
    ['sample', 'sampling option', async (o) => model.sample(new Float32Array(8), 1, o as never)],
    ['createCache', 'cache option', (o) => model.createCache(o as never)],
    ['createSession', 'cache option', (o) => model.createSession(o as never)],
    ['createSessionGroup', 'cache option', (o) => model.createSessionGroup(2, o as never)],
    ['session.generate', 'session generation option', async (o) => session.generate([1], o as never)],
    ['group session generate', 'session generation option', (o) => group.sessions[0]!.generate([1], o as never)],
    [
      'group.generate',
      'group generation option',
      async (o) => group.generate([{ session: group.sessions[1]!, prompt: [1] }], o as never),
    ],
    ['loadModel', 'load option', (o) => eng.loadModel(fixture, o as never)],
    ['createEngine', 'engine option', (o) => createEngine(o as never)],
  ];
  const caches = model.liveCaches.length;
  for (const [what, name, call] of calls) {
    for (const [o, got] of [
      [null, 'null'],
      [[], 'an array'],
      [5, 'number 5'],
    ] as const) {
      await rejects(
        () => call(o),
        (e) => e instanceof InvalidOptionError && e.message === `${name}s must be an object (or left out), got ${got}`,
        `${what}(${JSON.stringify(o)})`,
      );
    }
    await rejects(
      () => call({ maxNewTokenz: 1 }),
      (e) => e instanceof InvalidOptionError && e.message.startsWith(`unknown ${name} "maxNewTokenz".`),
      `${what} with a misspelt name`,
    );
  }
  assert.is(model.liveCaches.length, caches, 'no cache was created by a refused call');
  // Names that differ by one letter are offered; left out, the options are the defaults.
  await rejects(
    () => eng.loadModel(fixture, { dtyp: 'q8' } as never),
    (e) => e instanceof InvalidOptionError && /Did you mean dtype\?/.test(e.message),
    'loadModel dtyp',
  );
  // Load options and sources JavaScript callers can get wrong, each named before anything is read.
  for (const [src, o, re] of [
    [fixture, { dtype: null }, /^dtype must be one of 'f32', 'f16', 'q8', 'q4', got null$/],
    ['random:distilgpt2', { seed: -1 }, /^seed \(of random: weights\) must be an integer in \[0, 2\^53\), got -1$/],
    ['random:distilgpt2', { seed: 1.5 }, /got 1\.5$/],
    [fixture, { onProgress: 5 }, /^onProgress must be a function, got number$/],
    [{ url: 5 }, {}, /^model source \{ url \}: url must be a string/],
    [{ files: null }, {}, /^model source \{ files \}: files must be an array of File objects/],
  ] as const)
    await rejects(
      () => eng.loadModel(src as never, o as never),
      (e) => e instanceof InvalidOptionError && re.test(e.message),
      `loadModel ${JSON.stringify(src)} ${JSON.stringify(o)}`,
    );
  await rejects(
    () => model.generateBatch([[1], [2]], { numSequences: 3 } as never),
    (e) => e instanceof InvalidOptionError && /one sequence per prompt: numSequences 3 with 2 prompt/.test(e.message),
    'generateBatch numSequences',
  );
  assert.is((await model.generate([1], undefined)).sequences[0]!.tokens.length, 30);
  session.destroy();
  group.destroy();
});

test('bans that leave no token id at all are refused before any GPU work (generate, a sequence of a batch, beam search, a merged group turn alone)', async () => {
  const model = await tinyModel();
  const V = model.config.vocab_size;
  const all = Array.from({ length: V }, (_, i) => i);
  const allBut7 = all.filter((i) => i !== 7);
  const none = /ban all 50257 token ids, so no token could be generated/;
  const refused = (e: Error) => e instanceof InvalidOptionError && none.test(e.message);
  await rejects(() => model.generate([1], { suppressTokens: all }), refused, 'suppressTokens: all');
  await rejects(() => model.generate([1], { suppressTokens: allBut7, badWordsIds: [[7]] }), refused, 'with a bad word');
  await rejects(
    () => model.generate([1], { numSequences: 2, perSequence: [{}, { suppressTokens: all }] }),
    (e) => refused(e) && e.message.startsWith('sequence 1:'),
    'perSequence',
  );
  await rejects(
    () => model.beamSearch([1], { numBeams: 2, maxNewTokens: 2, suppressTokens: all }),
    refused,
    'beam search',
  );
  // EOS left, but held back by minNewTokens at the first step (a stop id too).
  const held = /ban all 50257 token ids, so no token could be generated/;
  const allButEos = all.filter((i) => i !== 50256);
  for (const call of [
    () => model.generate([1], { suppressTokens: allButEos, minNewTokens: 1 }),
    () => model.generate([1], { suppressTokens: allButEos.filter((i) => i !== 9), stopTokenIds: [9], minNewTokens: 2 }),
    () => model.beamSearch([1], { numBeams: 2, maxNewTokens: 2, suppressTokens: allButEos, minNewTokens: 1 }),
  ])
    await rejects(
      call,
      (e) => e instanceof InvalidOptionError && held.test(e.message) && /minNewTokens/.test(e.message),
    );
  // One id left (or EOS, which a one-token bad word never bans, as in transformers): it is what comes out.
  const one = await model.generate([1], { suppressTokens: allBut7, maxNewTokens: 3, seed: 1 });
  assert.equal(one.sequences[0]!.tokens, [7, 7, 7]);
  const noEos = allBut7.filter((i) => i !== 50256);
  const eos = await model.generate([1], { suppressTokens: noEos, badWordsIds: [[7], [50256]], maxNewTokens: 3 });
  assert.equal(eos.sequences[0]!.tokens, [50256], 'the one-token bad word [EOS] bans nothing');
  // In a session group the refused turn fails alone; the other one merges nothing and runs.
  const group = await model.createSessionGroup(2, { capacity: 16 });
  const [a, b] = await Promise.allSettled([
    group.sessions[0]!.generate([1], { suppressTokens: all }),
    group.sessions[1]!.generate([2], { maxNewTokens: 2, temperature: 0 }),
  ]);
  assert.ok(a!.status === 'rejected' && refused(a.reason as Error), 'the banned-out turn is refused');
  assert.ok(b!.status === 'fulfilled', 'the other turn runs');
  await group.idle();
  group.destroy();
});

test.run();
