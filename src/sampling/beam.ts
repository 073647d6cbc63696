/**
 * Beam search with the KV cache, ranked on the GPU.
 *
 * Each iteration: logits [B, V] of the beams' last tokens -> BeamKernel (log_softmax + beam score,
 * top 2B of B x V on the GPU) -> only the 2B (parent, token, score) triples come back (24 B bytes).
 * The CPU walks them best first: a candidate ending in EOS (ranked within the first B) goes to the
 * finished list, others become the next beams until B are kept. The beams' K/V are then reordered
 * by parent on the GPU (KvGather from one cache into its twin: ping-pong, no read-back) and the new
 * tokens are fed in one batched decode step.
 *
 * Semantics (the exercise's, with HF's options): score of a beam = sum of its tokens' log-probs;
 * stop when numReturnSequences hypotheses are finished (the exercise's rule, the default) - or,
 * with earlyStopping (HF's early_stopping=True), when numBeams are - or after maxNewTokens (then
 * the best unfinished beams fill the list). A hypothesis' reported score is
 * logprob / newTokens^lengthPenalty (lengthPenalty 0 by default: the plain sum).
 */
import { AbortError, ContextOverflowError, InvalidOptionError } from '../errors.js';
import { GpuTensor, Owned } from '../kernels/common.js';
import type { KVCache } from '../engine/kvcache.js';
import { decodeMeta, ForwardPlan, rowMeta, type GPT2Model } from '../engine/model.js';

export interface BeamOptions {
  numBeams: number;
  numReturnSequences?: number;
  maxNewTokens: number;
  /** score = logprob / new_tokens ** lengthPenalty; default 0. */
  lengthPenalty?: number;
  /**
   * false (default, the exercise's rule): stop once numReturnSequences hypotheses ended with EOS;
   * true (HF's early_stopping=True): stop once numBeams have. Both stop at maxNewTokens.
   * (HF's early_stopping=False heuristic is not implemented.)
   */
  earlyStopping?: boolean;
  /** Token that ends a hypothesis; default the model's eos_token_id. */
  eosTokenId?: number;
  signal?: AbortSignal;
}

export interface BeamHypothesis {
  /** Sum of the log-probabilities of the new tokens. */
  logprob: number;
  /** logprob / newTokens ** lengthPenalty. */
  score: number;
  /** Prompt followed by the completion. */
  tokens: number[];
  finished: boolean;
}

export function validateBeam(o: BeamOptions, vocab: number): Required<Omit<BeamOptions, 'signal'>> {
  const int = (name: string, v: unknown, lo: number, hi: number): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
      throw new InvalidOptionError(`${name} must be an integer in [${lo}, ${hi}], got ${String(v)}`);
    }
    return v;
  };
  const numBeams = int('numBeams', o.numBeams, 1, 256);
  const numReturn = int('numReturnSequences', o.numReturnSequences ?? 1, 1, 256);
  if (numReturn > numBeams)
    throw new InvalidOptionError(`numReturnSequences (${numReturn}) must be <= numBeams (${numBeams})`);
  const maxNew = int('maxNewTokens', o.maxNewTokens, 0, 100_000);
  const lp = o.lengthPenalty ?? 0;
  if (typeof lp !== 'number' || !Number.isFinite(lp))
    throw new InvalidOptionError(`lengthPenalty must be a finite number, got ${String(lp)}`);
  const es = o.earlyStopping ?? false;
  if (typeof es !== 'boolean') throw new InvalidOptionError(`earlyStopping must be a boolean, got ${String(es)}`);
  const eos = o.eosTokenId ?? vocab - 1;
  int('eosTokenId', eos, 0, vocab - 1);
  return {
    numBeams,
    numReturnSequences: numReturn,
    maxNewTokens: maxNew,
    lengthPenalty: lp,
    earlyStopping: es,
    eosTokenId: eos,
  };
}

export async function beamSearch(
  model: GPT2Model,
  prompt: string | readonly number[],
  options: BeamOptions,
): Promise<BeamHypothesis[]> {
  model.checkAlive();
  const cfg = model.config;
  const o = validateBeam({ eosTokenId: cfg.eos_token_id, ...options }, cfg.vocab_size);
  const promptIds = model.promptIds(prompt);
  model.checkIds(promptIds);
  const B = o.numBeams;
  const P = promptIds.length;
  if (P + o.maxNewTokens > cfg.n_positions) {
    throw new ContextOverflowError(
      `beam search needs ${P} prompt + ${o.maxNewTokens} new tokens = ${P + o.maxNewTokens} positions; the window is ${cfg.n_positions}`,
    );
  }
  const penalise = (logprob: number, n: number): number =>
    o.lengthPenalty === 0 ? logprob : logprob / Math.max(1, n) ** o.lengthPenalty;
  if (o.maxNewTokens === 0) return [{ logprob: 0, score: 0, tokens: promptIds, finished: false }];

  const ctx = model.ctx;
  const k = model.kernels;
  const owned = new Owned(ctx);
  const capacity = P + o.maxNewTokens;
  const caches: KVCache[] = [];
  const plans: ForwardPlan[] = [];
  try {
    caches.push(
      await model.createCache({ rows: 1, capacity }),
      await model.createCache({ rows: B, capacity }),
      await model.createCache({ rows: B, capacity }),
    );
    const [scratch, cacheA, cacheB] = caches as [KVCache, KVCache, KVCache];
    // Prefill the prompt once; all B rows get the same logits (lastIdx repeated).
    const prefill = new ForwardPlan(model, scratch, P, B);
    plans.push(prefill);
    prefill.write({ ids: promptIds, meta: rowMeta(0, 0, P), lastIdx: new Uint32Array(B).fill(P - 1) });

    const decA = new ForwardPlan(model, cacheA, B, B, { decode: true });
    const decB = new ForwardPlan(model, cacheB, B, B, { decode: true });
    plans.push(decA, decB);

    const u32 = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const scores: GpuTensor = { buffer: owned.buffer('beam.scores', B * 4, u32), offset: 0, shape: [B], dtype: 'f32' };
    const parent: GpuTensor = { buffer: owned.buffer('beam.parent', B * 4, u32), offset: 0, shape: [B], dtype: 'u32' };
    const cand: GpuTensor = {
      buffer: owned.buffer('beam.cand', 2 * B * 3 * 4, u32),
      offset: 0,
      shape: [2 * B, 3],
      dtype: 'u32',
    };
    const staging = owned.buffer('beam.staging', 2 * B * 3 * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    // Initial beam scores: only beam 0 is live (the others are copies of it).
    ctx.device.queue.writeBuffer(
      scores.buffer,
      0,
      Float32Array.from({ length: B }, (_, i) => (i === 0 ? 0 : -1e9)),
    );

    const rank = (plan: ForwardPlan) => k.beam.bind(owned, { logits: plan.logits, beamScores: scores, out: cand });
    const rankPrefill = rank(prefill);
    const rankA = rank(decA);
    const rankB = rank(decB);
    // Reorder by parent: from the cache just used into its twin, for every layer.
    const gather = (src: KVCache, dst: KVCache) => {
      const d = [];
      for (let l = 0; l < cfg.n_layer; l++) {
        d.push(
          k.kvGather.bind(
            owned,
            { src: src.kTensor(l), dst: dst.kTensor(l), parent, len: P, maxLen: capacity },
            `h.${l}.k_reorder`,
          ),
        );
        d.push(
          k.kvGather.bind(
            owned,
            { src: src.vTensor(l), dst: dst.vTensor(l), parent, len: P, maxLen: capacity },
            `h.${l}.v_reorder`,
          ),
        );
      }
      return d;
    };
    const gatherScratchToA = gather(scratch, cacheA);
    const gatherAtoB = gather(cacheA, cacheB);
    const gatherBtoA = gather(cacheB, cacheA);

    const readCandidates = async (): Promise<Array<{ parent: number; token: number; score: number }>> => {
      const words = new Uint32Array(await ctx.mapCopy(staging, 2 * B * 12));
      const f = new Float32Array(words.buffer);
      return Array.from({ length: 2 * B }, (_, i) => ({
        parent: words[3 * i]!,
        token: words[3 * i + 1]!,
        score: f[3 * i + 2]!,
      }));
    };

    let beams: Array<{ tokens: number[]; logprob: number; parent?: number; token?: number }> = Array.from(
      { length: B },
      () => ({ tokens: [], logprob: 0 }),
    );
    const finished: BeamHypothesis[] = [];
    // Step 0: rank the prompt's continuations.
    model.submit([...prefill.dispatches, ...rankPrefill], (enc) =>
      enc.copyBufferToBuffer(cand.buffer, 0, staging, 0, 2 * B * 12),
    );
    let cands = await readCandidates();
    // The prompt's K/V for every beam comes from the scratch row 0 (parent 0 for all).
    let cur = cacheA;
    let firstGather = true;
    for (let step = 0; step < o.maxNewTokens; step++) {
      if (options.signal?.aborted) throw new AbortError(`beam search aborted after ${step} steps`);
      const next: Array<{ tokens: number[]; logprob: number; parent: number; token: number }> = [];
      for (let i = 0; i < cands.length && next.length < B; i++) {
        const c = cands[i]!;
        const base = beams[c.parent]!;
        if (c.token === o.eosTokenId) {
          // Only candidates ranked within the first B may finish (as HF).
          if (i < B) {
            const n = base.tokens.length + 1;
            finished.push({
              logprob: c.score,
              score: penalise(c.score, n),
              tokens: [...promptIds, ...base.tokens, c.token],
              finished: true,
            });
          }
          continue;
        }
        next.push({ tokens: [...base.tokens, c.token], logprob: c.score, parent: c.parent, token: c.token });
      }
      if (next.length < B)
        throw new Error(`beam search: only ${next.length} continuations for ${B} beams (vocabulary too small?)`);
      beams = next;
      const newLen = step + 1;
      if (finished.length >= (o.earlyStopping ? o.numBeams : o.numReturnSequences)) break;
      if (newLen >= o.maxNewTokens) break;
      // Feed the new tokens: reorder caches by parent, then one decode step for all beams.
      const dst = firstGather ? cacheA : cur === cacheA ? cacheB : cacheA;
      const gatherD = firstGather ? gatherScratchToA : cur === cacheA ? gatherAtoB : gatherBtoA;
      const dec = dst === cacheA ? decA : decB;
      const rk = dst === cacheA ? rankA : rankB;
      firstGather = false;
      // Copy only the slots holding tokens so far (prompt + step new tokens, the newest not yet fed).
      for (const g of gatherD) g.setLength(P + step);
      ctx.device.queue.writeBuffer(parent.buffer, 0, Uint32Array.from(beams.map((b) => (step === 0 ? 0 : b.parent))));
      ctx.device.queue.writeBuffer(scores.buffer, 0, Float32Array.from(beams.map((b) => b.logprob)));
      dec.write({ ids: beams.map((b) => b.token!), meta: decodeMeta(new Uint32Array(B).fill(P + step)) });
      model.submit([...gatherD, ...dec.dispatches, ...rk], (enc) =>
        enc.copyBufferToBuffer(cand.buffer, 0, staging, 0, 2 * B * 12),
      );
      cur = dst;
      cands = await readCandidates();
    }
    // Fill with the best unfinished beams, then order by score.
    const running = beams.map((b) => ({
      logprob: b.logprob,
      score: penalise(b.logprob, b.tokens.length),
      tokens: [...promptIds, ...b.tokens],
      finished: false,
    }));
    const all = finished.length >= o.numReturnSequences ? finished : [...finished, ...running];
    all.sort((a, b) => b.score - a.score);
    ctx.throwIfErrors();
    return all.slice(0, o.numReturnSequences);
  } finally {
    for (const p of plans) p.destroy();
    owned.destroy();
    for (const c of caches) c.destroy();
  }
}
