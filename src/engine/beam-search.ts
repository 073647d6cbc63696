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
import { AbortError, ContextOverflowError } from '../errors.js';
import { bannedNext, checkSomeIdAllowed } from '../sampling/bans.js';
import {
  BEAM_OPTIONS,
  validateBeam,
  type BeamHypothesis,
  type BeamOptions,
  type BeamResult,
} from '../sampling/beam.js';
import { checkOptions } from '../sampling/names.js';
import { CallErrors } from '../gpu/call-errors.js';
import { GpuTensor, Owned, type Dispatch } from '../gpu/common.js';
import { checkVocabRows } from '../gpu/limits.js';
import type { KvGatherDispatch } from '../kernels/kvcache.js';
import { MAX_BEAM_K } from '../kernels/beam.js';
import type { KVCache } from './kvcache.js';
import { decodeMeta, ForwardPlan, rowMeta, type GPT2Model } from './model.js';

type Options = ReturnType<typeof validateBeam>;

/** A hypothesis before its text is decoded. */
type Hypothesis = Omit<BeamHypothesis, 'text'>;

/** A ranked continuation the GPU sends back: beam `parent` followed by `token`, with the summed log-prob. */
interface Candidate {
  parent: number;
  token: number;
  score: number;
}

/** A live beam: its new tokens and summed log-prob; parent and token: the candidate it came from. */
interface Beam {
  tokens: number[];
  logprob: number;
  parent?: number;
  token?: number;
}

/** The GPU side of one search: plans, ranking and reordering dispatches, and their small buffers. */
interface BeamGpu {
  prefill: ForwardPlan;
  /** The decode plans of cache A and cache B (the beams ping-pong between them). */
  dec: [ForwardPlan, ForwardPlan];
  /** The ranking of the prefill's logits, of cache A's and of cache B's, keeping K candidates. */
  rank: [Dispatch[], Dispatch[], Dispatch[]];
  /** Candidates ranked: 2B, more when bans leave fewer than 2B (growRank). */
  K: number;
  /** K/V reordering by parent: scratch -> A (the first step), A -> B, B -> A. */
  gatherFirst: KvGatherDispatch[];
  gatherAB: KvGatherDispatch[];
  gatherBA: KvGatherDispatch[];
  scores: GpuTensor;
  parent: GpuTensor;
  cand: GpuTensor;
  staging: GPUBuffer;
  /** Owns the search's buffers and bind groups. */
  owned: Owned;
}

export async function beamSearch(
  model: GPT2Model,
  prompt: string | readonly number[],
  options: BeamOptions,
): Promise<BeamResult> {
  model.checkAlive();
  const cfg = model.config;
  // The object itself first: spread, null or an array would pass unseen.
  const given = checkOptions(options, BEAM_OPTIONS, 'beam search option');
  const o = validateBeam({ eosTokenId: cfg.eos_token_id, ...given }, cfg.vocab_size);
  const promptIds = model.promptIds(prompt);
  model.checkIds(promptIds);
  checkSomeIdAllowed(o, [o.eosTokenId], [o.eosTokenId], cfg.vocab_size, 'beamSearch');
  const P = promptIds.length;
  if (P + o.maxNewTokens > cfg.n_positions) {
    throw new ContextOverflowError(
      `beam search needs ${P} prompt + ${o.maxNewTokens} new tokens = ${P + o.maxNewTokens} positions; the window is ${cfg.n_positions}`,
    );
  }
  const result = (hyps: Hypothesis[]): BeamResult => ({
    promptIds,
    sequences: hyps.map((h) => ({
      ...h,
      text: model.tokenizer.decode(h.finished ? h.tokens.slice(0, -1) : h.tokens),
    })),
  });
  if (o.maxNewTokens === 0)
    return result([{ logprob: 0, score: 0, tokens: [], finished: false, finishReason: 'length' }]);
  checkVocabRows(model.ctx, o.numBeams, cfg.vocab_size, 'numBeams', 'beams');

  const owned = new Owned(model.ctx);
  const capacity = P + o.maxNewTokens;
  const caches: KVCache[] = [];
  const plans: ForwardPlan[] = [];
  try {
    caches.push(
      await model.createCache({ rows: 1, capacity }),
      await model.createCache({ rows: o.numBeams, capacity }),
      await model.createCache({ rows: o.numBeams, capacity }),
    );
    const errors = new CallErrors(model.ctx); // this search's GPU errors, nobody else's
    const three = caches as [KVCache, KVCache, KVCache];
    const gpu = errors.run(() => buildGpu(model, owned, three, plans, promptIds, o.numBeams));
    const { beams, finished } = await search(model, gpu, promptIds, o, options.signal, errors);
    await errors.check();
    return result(best(beams, finished, o));
  } catch (e) {
    throw model.failure(e, 'this beam search');
  } finally {
    for (const p of plans) p.destroy();
    owned.destroy();
    for (const c of caches) c.destroy();
  }
}

/** The search: rank the prompt's continuations, then per step keep B beams, feed them, rank again. */
async function search(
  model: GPT2Model,
  gpu: BeamGpu,
  promptIds: number[],
  o: Options,
  signal: AbortSignal | undefined,
  errors: CallErrors,
): Promise<{ beams: Beam[]; finished: Hypothesis[] }> {
  const B = o.numBeams;
  const P = promptIds.length;
  const queue = model.ctx.device.queue;
  let beams: Beam[] = Array.from({ length: B }, () => ({ tokens: [], logprob: 0 }));
  const finished: Hypothesis[] = [];
  const bans = banRule(promptIds, o);
  // Step 0: rank the prompt's continuations (all B rows get the prompt's logits).
  const aborted = (step: number) => new AbortError(`beam search aborted after ${step} steps`);
  const ranked = (which: 0 | 1 | 2, step: number) =>
    abortable(candidates(model, gpu, which, beams, bans, errors), signal, () => aborted(step));
  errors.run(() => model.submit([...gpu.prefill.dispatches, ...gpu.rank[0]], (enc) => copyCandidates(enc, gpu)));
  let cands = await ranked(0, 0);
  for (let step = 0; step < o.maxNewTokens; step++) {
    beams = nextBeams(cands, beams, finished, o);
    if (signal?.aborted) throw aborted(step);
    if (finished.length >= (o.earlyStopping ? o.numBeams : o.numReturnSequences)) break;
    if (step + 1 >= o.maxNewTokens) break;
    // Feed the new tokens: reorder the caches by parent, then one decode step for all beams.
    // The prompt's K/V for every beam comes from the scratch row 0 (parent 0 for all).
    const { gather, dec, which } = hop(gpu, step);
    // Copy only the slots holding tokens so far (prompt + step new tokens, the newest not yet fed).
    errors.run(() => {
      for (const g of gather) g.setLength(P + step);
      queue.writeBuffer(gpu.parent.buffer, 0, Uint32Array.from(beams.map((b) => (step === 0 ? 0 : b.parent!))));
      queue.writeBuffer(gpu.scores.buffer, 0, Float32Array.from(beams.map((b) => b.logprob)));
      dec.write({ ids: beams.map((b) => b.token!), meta: decodeMeta(new Uint32Array(B).fill(P + step)) });
      model.submit([...gather, ...dec.dispatches, ...gpu.rank[which]], (enc) => copyCandidates(enc, gpu));
    });
    cands = await ranked(which, step + 1);
    model.checkAlive('this beam search');
  }
  return { beams, finished };
}

/** The ids a hypothesis (its new tokens) may not take next, or undefined when no ban option is set. */
type BanRule = ((tokens: readonly number[]) => Set<number>) | undefined;

/**
 * The bans of generate (src/sampling/bans.ts) on a hypothesis' prompt + tokens, and EOS while it
 * has fewer than minNewTokens new tokens. As in transformers' beam search they act on the
 * log-probabilities (a banned candidate is -inf: left out; the others keep their scores).
 */
function banRule(promptIds: readonly number[], o: Options): BanRule {
  const on = o.noRepeatNgramSize > 0 || o.badWordsIds.length || o.suppressTokens.length || o.minNewTokens > 0;
  if (!on) return undefined;
  return (tokens) => {
    const ids = bannedNext([...promptIds, ...tokens], o, [o.eosTokenId]);
    if (tokens.length < o.minNewTokens) ids.add(o.eosTokenId);
    return ids;
  };
}

/**
 * The best 2B candidates of the ranking just submitted (`which`: the prefill's or a decode plan's)
 * that no ban forbids: the GPU ranks K of them; when bans leave fewer than 2B, the same logits are
 * ranked again with a larger K (kept for later steps), and past the kernel's MAX_BEAM_K (bans that
 * forbid the most likely hundreds of ids) the host ranks that step's logits itself (hostCandidates).
 */
async function candidates(
  model: GPT2Model,
  gpu: BeamGpu,
  which: 0 | 1 | 2,
  beams: readonly Beam[],
  bans: BanRule,
  errors: CallErrors,
): Promise<Candidate[]> {
  const B = beams.length;
  const most = B * model.config.vocab_size;
  const banned = bans && beams.map((b) => bans(b.tokens));
  for (;;) {
    const all = await readCandidates(model, gpu, errors);
    const ok = banned ? all.filter((c) => !banned[c.parent]!.has(c.token)) : all;
    if (ok.length >= 2 * B || gpu.K >= most) return ok.slice(0, 2 * B);
    const K = Math.min(most, 2 * gpu.K + (all.length - ok.length));
    if (K > MAX_BEAM_K) return hostCandidates(model, gpu, which, banned!, errors);
    errors.run(() => {
      growRank(model, gpu, K);
      model.submit(gpu.rank[which], (enc) => copyCandidates(enc, gpu));
    });
  }
}

/**
 * The best 2B allowed candidates of ranking `which`, ranked on the host from its logits and the
 * beams' scores as the GPU left them (the same order: score descending, ties to the smaller flat
 * index; log_softmax in float64). B x V x 4 bytes come back: only for bans past MAX_BEAM_K.
 */
async function hostCandidates(
  model: GPT2Model,
  gpu: BeamGpu,
  which: 0 | 1 | 2,
  banned: ReadonlyArray<Set<number>>,
  errors: CallErrors,
): Promise<Candidate[]> {
  const logits = [gpu.prefill, ...gpu.dec][which]!.logits; // [B, V]
  const [B, V] = logits.shape as [number, number];
  const [rows, scores] = await Promise.all([
    model.ctx.readBuffer(logits.buffer, logits.offset, B * V * 4),
    model.ctx.readBuffer(gpu.scores.buffer, 0, B * 4),
  ]);
  errors.throwIfCaught();
  const l = new Float32Array(rows);
  const s = new Float32Array(scores);
  const best = new TopCandidates(2 * B);
  for (let b = 0; b < B; b++) {
    const row = l.subarray(b * V, (b + 1) * V);
    let m = -Infinity;
    for (const x of row) m = Math.max(m, x);
    let z = 0;
    for (const x of row) z += Math.exp(x - m);
    const lse = m + Math.log(z);
    for (let v = 0; v < V; v++)
      if (!banned[b]!.has(v)) best.offer({ parent: b, token: v, score: s[b]! + (row[v]! - lse) }, b * V + v);
  }
  return best.sorted();
}

/** The n best candidates offered (score descending, ties to the smaller flat index), by a min-heap. */
class TopCandidates {
  private readonly heap: Array<{ c: Candidate; at: number }> = [];
  constructor(private readonly n: number) {}
  /** Whether x ranks below y. */
  private static worse(x: { c: Candidate; at: number }, y: { c: Candidate; at: number }): boolean {
    return x.c.score < y.c.score || (x.c.score === y.c.score && x.at > y.at);
  }
  offer(c: Candidate, at: number): void {
    const h = this.heap;
    const e = { c, at };
    if (h.length === this.n) {
      if (!TopCandidates.worse(h[0]!, e)) return;
      h[0] = e;
      this.down(0);
    } else {
      h.push(e);
      for (let i = h.length - 1; i > 0;) {
        const p = (i - 1) >> 1;
        if (!TopCandidates.worse(h[i]!, h[p]!)) break;
        [h[i], h[p]] = [h[p]!, h[i]!];
        i = p;
      }
    }
  }
  private down(i: number): void {
    const h = this.heap;
    for (;;) {
      const a = 2 * i + 1;
      const b = a + 1;
      let w = i;
      if (a < h.length && TopCandidates.worse(h[a]!, h[w]!)) w = a;
      if (b < h.length && TopCandidates.worse(h[b]!, h[w]!)) w = b;
      if (w === i) return;
      [h[i], h[w]] = [h[w]!, h[i]!];
      i = w;
    }
  }
  sorted(): Candidate[] {
    return [...this.heap].sort((x, y) => (TopCandidates.worse(x, y) ? 1 : -1)).map((e) => e.c);
  }
}

/**
 * `p`, or the error `aborted()` makes as soon as `signal` aborts: a step's read-back is not waited
 * for (the GPU finishes the step; the caller frees its buffers meanwhile, which WebGPU allows).
 */
function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined, aborted: () => Error): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(aborted());
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * The ping-pong of step `step`: the beams' K/V go from the cache just used into its twin (from the
 * scratch prompt row at step 0), whose decode plan and ranking run next.
 */
function hop(gpu: BeamGpu, step: number): { gather: KvGatherDispatch[]; dec: ForwardPlan; which: 1 | 2 } {
  const toA = step % 2 === 0;
  const gather = step === 0 ? gpu.gatherFirst : toA ? gpu.gatherBA : gpu.gatherAB;
  return { gather, dec: gpu.dec[toA ? 0 : 1], which: toA ? 1 : 2 };
}

/**
 * Walks the candidates best first: one ending in EOS and ranked within the first B finishes a
 * hypothesis (as HF), others become the next beams until B are kept. Bans can leave fewer: the
 * rest are dead beams (score -inf, fed EOS so the batched step keeps its B rows), whose candidates
 * are never taken and which are never returned.
 */
function nextBeams(cands: Candidate[], beams: Beam[], finished: Hypothesis[], o: Options): Beam[] {
  const B = o.numBeams;
  const next: Beam[] = [];
  for (let i = 0; i < cands.length && next.length < B; i++) {
    const c = cands[i]!;
    if (c.score === -Infinity) break; // a dead beam's (best first: the rest are too)
    const base = beams[c.parent]!;
    if (c.token === o.eosTokenId) {
      if (i < B) {
        finished.push({
          logprob: c.score,
          score: penalise(o, c.score, base.tokens.length + 1),
          tokens: [...base.tokens, c.token],
          finished: true,
          finishReason: 'eos',
        });
      }
      continue;
    }
    next.push({ tokens: [...base.tokens, c.token], logprob: c.score, parent: c.parent, token: c.token });
  }
  while (next.length < B) next.push({ tokens: [], logprob: -Infinity, parent: 0, token: o.eosTokenId });
  return next;
}

/** A hypothesis' reported score: logprob / newTokens^lengthPenalty (0: the plain sum). */
function penalise(o: Options, logprob: number, n: number): number {
  return o.lengthPenalty === 0 ? logprob : logprob / Math.max(1, n) ** o.lengthPenalty;
}

/** The numReturnSequences best: the finished ones, filled with the best unfinished beams if too few. */
function best(beams: Beam[], finished: Hypothesis[], o: Options): Hypothesis[] {
  const running = beams
    .filter((b) => b.logprob > -Infinity)
    .map((b): Hypothesis => ({
      logprob: b.logprob,
      score: penalise(o, b.logprob, b.tokens.length),
      tokens: b.tokens,
      finished: false,
      finishReason: 'length',
    }));
  const all = finished.length >= o.numReturnSequences ? finished : [...finished, ...running];
  all.sort((a, b) => b.score - a.score);
  return all.slice(0, o.numReturnSequences);
}

function copyCandidates(enc: GPUCommandEncoder, gpu: BeamGpu): void {
  enc.copyBufferToBuffer(gpu.cand.buffer, 0, gpu.staging, 0, gpu.K * 12);
}

/** The K ranked (parent, token, score) triples of the last submit, best first. */
async function readCandidates(model: GPT2Model, gpu: BeamGpu, errors: CallErrors): Promise<Candidate[]> {
  const words = new Uint32Array(await model.ctx.mapCopy(gpu.staging, gpu.K * 12));
  errors.throwIfCaught();
  const f = new Float32Array(words.buffer);
  return Array.from({ length: gpu.K }, (_, i) => ({
    parent: words[3 * i]!,
    token: words[3 * i + 1]!,
    score: f[3 * i + 2]!,
  }));
}

/**
 * Plans, buffers and bind groups of a search with B beams: the prompt prefilled once into the
 * scratch cache (all B rows get its logits: lastIdx repeated), a decode plan per twin cache, the
 * ranking of each, and the K/V reordering between them.
 */
function buildGpu(
  model: GPT2Model,
  owned: Owned,
  [scratch, cacheA, cacheB]: [KVCache, KVCache, KVCache],
  plans: ForwardPlan[],
  promptIds: number[],
  B: number,
): BeamGpu {
  const P = promptIds.length;
  const prefill = new ForwardPlan(model, scratch, P, B);
  plans.push(prefill);
  prefill.write({ ids: promptIds, meta: rowMeta(0, 0, P), lastIdx: new Uint32Array(B).fill(P - 1) });
  const decA = new ForwardPlan(model, cacheA, B, B, { decode: true });
  const decB = new ForwardPlan(model, cacheB, B, B, { decode: true });
  plans.push(decA, decB);

  const u32 = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const scores: GpuTensor = { buffer: owned.buffer('beam.scores', B * 4, u32), offset: 0, shape: [B], dtype: 'f32' };
  const parent: GpuTensor = { buffer: owned.buffer('beam.parent', B * 4, u32), offset: 0, shape: [B], dtype: 'u32' };
  // Initial beam scores: only beam 0 is live (the others are copies of it).
  model.ctx.device.queue.writeBuffer(
    scores.buffer,
    0,
    Float32Array.from({ length: B }, (_, i) => (i === 0 ? 0 : -1e9)),
  );
  const gather = (src: KVCache, dst: KVCache) => gatherLayers(model, owned, src, dst, parent, P, scratch.capacity);
  const gpu: BeamGpu = {
    owned,
    prefill,
    dec: [decA, decB],
    rank: [[], [], []],
    K: 0,
    gatherFirst: gather(scratch, cacheA),
    gatherAB: gather(cacheA, cacheB),
    gatherBA: gather(cacheB, cacheA),
    scores,
    parent,
    cand: scores, // set by growRank
    staging: scores.buffer,
  };
  growRank(model, gpu, 2 * B);
  return gpu;
}

/**
 * (Re)builds the ranking dispatches of the three plans for K candidates, with their candidate and
 * staging buffers (the old ones stay owned until the search ends: K only grows, at most doubling).
 */
function growRank(model: GPT2Model, gpu: BeamGpu, K: number): void {
  const u32 = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const { owned } = gpu;
  gpu.K = K;
  gpu.cand = { buffer: owned.buffer('beam.cand', K * 3 * 4, u32), offset: 0, shape: [K, 3], dtype: 'u32' };
  gpu.staging = owned.buffer('beam.staging', K * 3 * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
  const rank = (plan: ForwardPlan) =>
    model.kernels.beam.bind(owned, { logits: plan.logits, beamScores: gpu.scores, out: gpu.cand, k: K });
  gpu.rank = [rank(gpu.prefill), rank(gpu.dec[0]), rank(gpu.dec[1])];
}

/** Reorders by parent, from one cache into its twin, for every layer (K and V). */
function gatherLayers(
  model: GPT2Model,
  owned: Owned,
  src: KVCache,
  dst: KVCache,
  parent: GpuTensor,
  len: number,
  maxLen: number,
): KvGatherDispatch[] {
  const d: KvGatherDispatch[] = [];
  for (let l = 0; l < model.config.n_layer; l++) {
    const k = { src: src.kTensor(l), dst: dst.kTensor(l), parent, len, maxLen };
    const v = { src: src.vTensor(l), dst: dst.vTensor(l), parent, len, maxLen };
    d.push(model.kernels.kvGather.bind(owned, k, `h.${l}.k_reorder`));
    d.push(model.kernels.kvGather.bind(owned, v, `h.${l}.v_reorder`));
  }
  return d;
}
