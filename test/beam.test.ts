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
      for (let v = 0; v < V; v++)
        cands.push({ tokens: b.tokens, logprob: b.logprob + row[v]! - m - Math.log(z), token: v });
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
});

test.run();
