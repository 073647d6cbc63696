/**
 * Beam search: parity with transformers on the tiny fixture (sequences exact, scores within 1e-3),
 * and a crafted model where EOS does occur, checked against a float64 CPU beam search.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { rejects } from './helpers.js';
import { tinyReference } from './fixtures-util.js';
import { cfgOf, randomModel, tinyModel } from './model-util.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { forward64, loadTensors } from './reference/gpt2.js';
import { InvalidOptionError } from '../src/errors.js';
import { bans64 } from './reference/sampling.js';

const ref = tinyReference();

for (const [key, nb, nr, max, lp] of [
  ['beam_nb6_nr2_max20_lp0.0', 6, 2, 20, 0],
  ['beam_nb4_nr4_max12_lp1.0', 4, 4, 12, 1],
] as const) {
  test(`${key}: sequences identical to transformers, scores within 1e-3, every prompt`, async () => {
    const model = await tinyModel();
    for (const [i, p] of ref.prompts.entries()) {
      const want = p[key];
      const res = await model.beamSearch(p.ids, {
        numBeams: nb,
        numReturnSequences: nr,
        maxNewTokens: max,
        lengthPenalty: lp,
        earlyStopping: true,
      });
      const got = res.sequences;
      assert.is(got.length, nr);
      // The prompt comes separately; each hypothesis holds its completion (tokens and text).
      assert.equal(res.promptIds, p.ids);
      assert.equal(
        got.map((g) => [...res.promptIds, ...g.tokens]),
        want.sequences,
        `prompt ${i} sequences`,
      );
      for (const g of got) {
        assert.is(g.tokens.length, max);
        assert.is(g.text, model.tokenizer.decode(g.tokens));
        assert.is(g.finishReason, 'length');
      }
      got.forEach((g, j) =>
        assert.ok(
          Math.abs(g.score - want.scores[j]!) <= 1e-3,
          `prompt ${i} beam ${j}: score ${g.score} vs ${want.scores[j]}`,
        ),
      );
    }
  });
}

/** The exercise's beam search on the CPU, float64, recomputing the whole sequence each step. */
function beamReference(
  tensors: Map<string, Float32Array>,
  cfg: ReturnType<typeof cfgOf>,
  prompt: number[],
  nb: number,
  nr: number,
  maxNew: number,
  eos: number,
  banned: (ids: number[], newTokens: number) => Set<number> = () => new Set(),
) {
  let beams = [{ tokens: [] as number[], logprob: 0 }];
  const finished: Array<{ tokens: number[]; logprob: number }> = [];
  for (let step = 0; step < maxNew; step++) {
    const cands: Array<{ tokens: number[]; logprob: number; token: number }> = [];
    for (const b of beams) {
      const seq = [...prompt, ...b.tokens];
      const all = forward64(tensors, cfg, seq);
      const V = cfg.vocab_size;
      const row = all.subarray((seq.length - 1) * V, seq.length * V);
      let m = -Infinity;
      for (const x of row) m = Math.max(m, x);
      let z = 0;
      for (const x of row) z += Math.exp(x - m);
      // As transformers: the processors act on the log-probabilities (a banned token is -inf).
      const ban = banned(seq, b.tokens.length);
      for (let v = 0; v < V; v++)
        if (!ban.has(v)) cands.push({ tokens: b.tokens, logprob: b.logprob + row[v]! - m - Math.log(z), token: v });
    }
    cands.sort((a, b) => b.logprob - a.logprob);
    const next = [];
    for (let i = 0; i < cands.length && next.length < nb; i++) {
      const c = cands[i]!;
      if (c.token === eos) {
        if (i < nb) finished.push({ tokens: [...prompt, ...c.tokens, eos], logprob: c.logprob });
        continue;
      }
      next.push({ tokens: [...c.tokens, c.token], logprob: c.logprob });
    }
    beams = next;
    if (finished.length >= nr) break;
  }
  const all =
    finished.length >= nr
      ? finished
      : [...finished, ...beams.map((b) => ({ tokens: [...prompt, ...b.tokens], logprob: b.logprob }))];
  return all.sort((a, b) => b.logprob - a.logprob).slice(0, nr);
}

test('beam search where EOS occurs: finished hypotheses match a float64 CPU beam search', async () => {
  // A small random model; its EOS id is set to a token the greedy path produces early, so beams end.
  const base = cfgOf({ vocab_size: 61, n_positions: 32, n_embd: 32, n_head: 2, n_layer: 2 });
  const probe = await randomModel(base, 5);
  const greedy = await probe.generate([1, 2, 3], { temperature: 0, maxNewTokens: 4, stopAtEos: false });
  probe.destroy();
  const eos = greedy.sequences[0]!.tokens[2]!;
  const cfg = { ...base, eos_token_id: eos };
  const model = await randomModel(cfg, 5);
  try {
    const res = await model.beamSearch([1, 2, 3], { numBeams: 3, numReturnSequences: 2, maxNewTokens: 8 });
    const got = res.sequences;
    const want = beamReference(await loadTensors(randomCheckpoint(cfg, 5)), cfg, [1, 2, 3], 3, 2, 8, eos);
    assert.ok(
      got.some((g) => g.finished && g.finishReason === 'eos' && g.tokens[g.tokens.length - 1] === eos),
      'some hypothesis ended with EOS',
    );
    assert.equal(
      got.map((g) => [...res.promptIds, ...g.tokens]),
      want.map((w) => w.tokens),
    );
    // A finished hypothesis' text leaves EOS out, as generate's does.
    for (const g of got) assert.is(g.text, model.tokenizer.decode(g.finished ? g.tokens.slice(0, -1) : g.tokens));
    got.forEach((g, i) =>
      assert.ok(Math.abs(g.logprob - want[i]!.logprob) < 1e-4, `logprob ${g.logprob} vs ${want[i]!.logprob}`),
    );
    // minNewTokens: EOS is banned until a hypothesis has that many new tokens (here every EOS above
    // came earlier), as in the float64 search with that ban.
    const short = Math.min(...got.filter((g) => g.finished).map((g) => g.tokens.length));
    const min = short + 1;
    const held = await model.beamSearch([1, 2, 3], {
      numBeams: 3,
      numReturnSequences: 2,
      maxNewTokens: 8,
      minNewTokens: min,
    });
    const none = { noRepeatNgramSize: 0, badWordsIds: [], suppressTokens: [], minNewTokens: min };
    const wantHeld = beamReference(
      await loadTensors(randomCheckpoint(cfg, 5)),
      cfg,
      [1, 2, 3],
      3,
      2,
      8,
      eos,
      (ids, n) => bans64(ids, none, [eos], n),
    );
    assert.equal(
      held.sequences.map((g) => [...held.promptIds, ...g.tokens]),
      wantHeld.map((w) => w.tokens),
    );
    for (const g of held.sequences) assert.ok(!g.tokens.slice(0, min).includes(eos), `EOS before ${min}: ${g.tokens}`);
  } finally {
    model.destroy();
  }
});

test('beam search with bans (no-repeat n-grams, bad words, suppressed tokens, min new tokens) matches float64', async () => {
  const cfg = cfgOf({ vocab_size: 61, n_positions: 40, n_embd: 32, n_head: 2, n_layer: 2 });
  const model = await randomModel(cfg, 7);
  const tensors = await loadTensors(randomCheckpoint(cfg, 7));
  const prompt = [1, 2, 3, 1, 2];
  const none = { noRepeatNgramSize: 0, badWordsIds: [], suppressTokens: [], minNewTokens: 0 };
  try {
    const plain = await model.beamSearch(prompt, { numBeams: 3, numReturnSequences: 3, maxNewTokens: 10 });
    // Suppressing 40 of the 61 ids leaves the GPU's first 2B candidates mostly banned: it ranks again with more.
    const many = Array.from({ length: 40 }, (_, i) => (i * 7 + 1) % 61).filter((t) => t !== cfg.eos_token_id);
    const cases = [
      { noRepeatNgramSize: 2 },
      { noRepeatNgramSize: 1, minNewTokens: 4 },
      { badWordsIds: [[3, plain.sequences[0]!.tokens[0]!], [plain.sequences[0]!.tokens[1]!]] },
      { suppressTokens: many, minNewTokens: 10 },
    ];
    for (const bans of cases) {
      const res = await model.beamSearch(prompt, { numBeams: 3, numReturnSequences: 3, maxNewTokens: 10, ...bans });
      const o = { ...none, ...bans };
      const want = beamReference(tensors, cfg, prompt, 3, 3, 10, cfg.eos_token_id, (ids, n) =>
        bans64(ids, o, [cfg.eos_token_id], n),
      );
      const got = res.sequences.map((g) => [...res.promptIds, ...g.tokens]);
      assert.equal(
        got,
        want.map((w) => w.tokens),
        JSON.stringify(bans),
      );
      res.sequences.forEach((g, i) => assert.ok(Math.abs(g.logprob - want[i]!.logprob) < 1e-4, JSON.stringify(bans)));
      assert.not.equal(
        res.sequences.map((g) => g.tokens),
        plain.sequences.map((g) => g.tokens),
        `the bans change the beams: ${JSON.stringify(bans)}`,
      );
      if (o.noRepeatNgramSize === 2)
        for (const g of res.sequences) {
          // No new token completes a bigram seen before it (the prompt's own (1, 2) twice is allowed).
          const ids = [...prompt, ...g.tokens];
          for (let j = prompt.length; j < ids.length; j++) {
            const seen = ids.slice(1, j).map((t, i) => `${ids[i]},${t}`);
            assert.not.ok(seen.includes(`${ids[j - 1]},${ids[j]}`), `step ${j - prompt.length} of ${ids}`);
          }
        }
    }
  } finally {
    model.destroy();
  }
});

test('bans past the GPU ranking (the likeliest hundreds of ids banned) rank on the host and match float64; bans leaving only EOS end every beam', async () => {
  const cfg = cfgOf({ vocab_size: 1500, n_positions: 24, n_embd: 32, n_head: 2, n_layer: 2, eos_token_id: 1499 });
  const model = await randomModel(cfg, 11);
  const tensors = await loadTensors(randomCheckpoint(cfg, 11));
  const prompt = [5, 6, 7];
  const none = { noRepeatNgramSize: 0, badWordsIds: [], suppressTokens: [], minNewTokens: 0 };
  try {
    // 10 ids and EOS allowed: 3 beams need about 6 x 1500 / 11 ranked candidates, past MAX_BEAM_K (512).
    const allowed = new Set([3, 100, 222, 345, 500, 777, 901, 1024, 1300, 1498, 1499]);
    const suppressTokens = Array.from({ length: 1500 }, (_, i) => i).filter((i) => !allowed.has(i));
    for (const minNewTokens of [0, 3]) {
      const bans = { suppressTokens, minNewTokens };
      const res = await model.beamSearch(prompt, { numBeams: 3, numReturnSequences: 3, maxNewTokens: 6, ...bans });
      const want = beamReference(tensors, cfg, prompt, 3, 3, 6, cfg.eos_token_id, (ids, n) =>
        bans64(ids, { ...none, ...bans }, [cfg.eos_token_id], n),
      );
      assert.equal(
        res.sequences.map((g) => [...res.promptIds, ...g.tokens]),
        want.map((w) => w.tokens),
        `minNewTokens ${minNewTokens}`,
      );
      res.sequences.forEach((g, i) => assert.ok(Math.abs(g.logprob - want[i]!.logprob) < 1e-4, `beam ${i}`));
      for (const g of res.sequences)
        assert.ok(
          g.tokens.every((t) => allowed.has(t)),
          `only allowed ids: ${g.tokens}`,
        );
    }
    // Only EOS left: the first step finishes the beam (the other rows are dead), nothing fails.
    const eosOnly = Array.from({ length: 1499 }, (_, i) => i);
    const res = await model.beamSearch(prompt, { numBeams: 3, maxNewTokens: 4, suppressTokens: eosOnly });
    const want = beamReference(tensors, cfg, prompt, 3, 1, 4, cfg.eos_token_id, () => new Set(eosOnly));
    assert.equal(
      res.sequences.map((g) => g.tokens),
      [[cfg.eos_token_id]],
    );
    assert.ok(Math.abs(res.sequences[0]!.logprob - want[0]!.logprob) < 1e-4);
    assert.is(res.sequences[0]!.finishReason, 'eos');
  } finally {
    model.destroy();
  }
});

test('beam options are validated', async () => {
  const model = await tinyModel();
  await rejects(
    () => model.beamSearch([1], { numBeams: 2, numReturnSequences: 3, maxNewTokens: 4 }),
    (e: Error) =>
      e instanceof InvalidOptionError && /numReturnSequences \(3\) must be <= numBeams \(2\)/.test(e.message),
  );
  await rejects(
    () => model.beamSearch([1], { numBeams: 0, maxNewTokens: 4 }),
    (e: Error) => e instanceof InvalidOptionError && /numBeams/.test(e.message),
  );
  await rejects(
    () => model.beamSearch([1], { numBeams: 2, maxNewTokens: -1 }),
    (e: Error) => e instanceof InvalidOptionError && /maxNewTokens/.test(e.message),
  );
  await rejects(
    () => model.beamSearch([1], { numBeams: 2, maxNewTokens: 2, lengthPenalty: NaN }),
    (e: Error) => e instanceof InvalidOptionError && /lengthPenalty/.test(e.message),
  );
  await rejects(
    () => model.beamSearch([1], { numBeams: 2, maxNewTokens: 2, noRepeatNgramSize: -2 }),
    (e: Error) => e instanceof InvalidOptionError && /noRepeatNgramSize/.test(e.message),
  );
  await rejects(
    () => model.beamSearch([1], { numBeams: 2, maxNewTokens: 2, badWordsIds: [[1, 1e9]] }),
    (e: Error) => e instanceof InvalidOptionError && /badWordsIds\[0\]\[1\]/.test(e.message),
  );
});

test.run();
