/**
 * float64 references for the sampler: the logit processors, the kept set and distribution of
 * top-k / top-p / min-p, Philox4x32-10 and the Gumbel-max draw.
 */
import type { NormalizedSampling } from '../../src/sampling/options.js';

/**
 * The ids transformers' processors set to -inf after the ids `prev`, written as transformers writes
 * them (generation/logits_process.py), independently of src/sampling/bans.ts:
 * NoRepeatNGramLogitsProcessor (_get_ngrams over every position, then the last n-1 ids' entry),
 * NoBadWordsLogitsProcessor (SequenceBiasLogitsProcessor with -inf; [eos] sequences dropped),
 * SuppressTokensLogitsProcessor, MinNewTokensLengthLogitsProcessor (`newTokens` drawn so far).
 */
export function bans64(
  prev: readonly number[],
  o: Pick<NormalizedSampling, 'noRepeatNgramSize' | 'badWordsIds' | 'suppressTokens' | 'minNewTokens'>,
  eosIds: readonly number[] = [],
  newTokens = 0,
): Set<number> {
  const banned = new Set<number>();
  const n = o.noRepeatNgramSize;
  const curLen = prev.length;
  if (n > 0 && curLen + 1 >= n) {
    const generated = new Map<string, number[]>();
    for (let i = 0; i + n <= curLen; i++) {
      const ngram = prev.slice(i, i + n);
      const key = JSON.stringify(ngram.slice(0, -1));
      generated.set(key, [...(generated.get(key) ?? []), ngram[n - 1]!]);
    }
    for (const t of generated.get(JSON.stringify(prev.slice(curLen + 1 - n, curLen))) ?? []) banned.add(t);
  }
  const words = o.badWordsIds.filter((w) => !eosIds.some((e) => w.length === 1 && w[0] === e));
  for (const w of words) {
    if (w.length === 1) banned.add(w[0]!);
    else if (
      w.length <= curLen &&
      JSON.stringify(prev.slice(curLen - (w.length - 1))) === JSON.stringify(w.slice(0, -1))
    )
      banned.add(w[w.length - 1]!);
  }
  for (const t of o.suppressTokens) banned.add(t);
  if (newTokens < o.minNewTokens) for (const e of eosIds) banned.add(e);
  return banned;
}

/**
 * Steps 1-4 (bias, repetition penalty, the bans of bans64, temperature (skipped when 0),
 * frequency/presence) in float64.
 */
export function processLogits64(
  logits: ArrayLike<number>,
  o: NormalizedSampling,
  prev: ArrayLike<number> = [],
): Float64Array {
  const V = logits.length;
  const counts = new Uint32Array(V);
  for (let i = 0; i < prev.length; i++) counts[prev[i]!]!++;
  const banned = bans64(Array.from(prev), o);
  const z = Float64Array.from(logits as ArrayLike<number>);
  for (const [id, b] of o.logitBias) z[id]! += b;
  for (let v = 0; v < V; v++) {
    const c = counts[v]!;
    let x = z[v]!;
    if (c > 0) x = x < 0 ? x * o.repetitionPenalty : x / o.repetitionPenalty;
    if (banned.has(v)) x = -Infinity;
    if (o.temperature > 0) x /= o.temperature;
    if (c > 0) x -= o.freqPenalty * c + o.presencePenalty;
    z[v] = x;
  }
  return z;
}

/** Token ids in (z descending, id ascending) order. */
export function order(z: ArrayLike<number>): number[] {
  return Array.from({ length: z.length }, (_, i) => i).sort((a, b) => z[b]! - z[a]! || a - b);
}

function softmaxOver(z: ArrayLike<number>, kept: boolean[]): Float64Array {
  let m = -Infinity;
  for (let v = 0; v < z.length; v++) if (kept[v] && z[v]! > m) m = z[v]!;
  const p = new Float64Array(z.length);
  let s = 0;
  for (let v = 0; v < z.length; v++) if (kept[v]) s += p[v] = Math.exp(z[v]! - m);
  for (let v = 0; v < z.length; v++) p[v]! /= s;
  return p;
}

/**
 * The distribution the sampler draws from (steps 5-7 on processed logits z), float64. Top-p uses
 * the documented tolerance: a cumulative within `fuzz` below p counts as reaching it.
 */
export function distribution64(
  z: ArrayLike<number>,
  o: NormalizedSampling,
  fuzz = 2 ** -22,
): { kept: boolean[]; probs: Float64Array } {
  const V = z.length;
  const ord = order(z);
  const minKeep = Math.min(o.minTokensToKeep, V);
  let kept = new Array<boolean>(V).fill(true);
  if (o.temperature === 0) {
    kept = new Array<boolean>(V).fill(false);
    kept[ord[0]!] = true;
    return { kept, probs: softmaxOver(z, kept) };
  }
  if (o.topK > 0) {
    const k = Math.min(Math.max(o.topK, minKeep), V);
    const t = z[ord[k - 1]!]!;
    for (let v = 0; v < V; v++) kept[v] = z[v]! >= t;
  }
  if (o.topP > 0 && o.topP < 1) {
    const p = softmaxOver(z, kept);
    let cum = 0;
    let n = 0;
    for (const v of ord) {
      if (!kept[v]) break; // kept tokens form a prefix of `ord`
      cum += p[v]!;
      n++;
      if (cum >= o.topP - fuzz) break;
    }
    n = Math.max(n, minKeep);
    kept = new Array<boolean>(V).fill(false);
    for (let i = 0; i < n; i++) kept[ord[i]!] = true;
  }
  if (o.minP > 0) {
    const p = softmaxOver(z, kept);
    const top = p[ord[0]!]!;
    const next = kept.map((k, v) => k && p[v]! >= o.minP * top);
    if (next.filter(Boolean).length >= minKeep) kept = next;
    else {
      kept = new Array<boolean>(V).fill(false);
      for (let i = 0; i < minKeep; i++) kept[ord[i]!] = true;
    }
  }
  return { kept, probs: softmaxOver(z, kept) };
}

// ---- Philox4x32-10 ----

function mulhilo(a: number, b: number): [number, number] {
  const p = BigInt(a) * BigInt(b);
  return [Number(p >> 32n), Number(p & 0xffffffffn)];
}

/** Philox4x32-10 of a counter (4 words) under a key (2 words). */
export function philox4x32(ctr: readonly number[], key: readonly number[]): number[] {
  let [c0, c1, c2, c3] = ctr.map((x) => x >>> 0) as [number, number, number, number];
  let [k0, k1] = key.map((x) => x >>> 0) as [number, number];
  for (let i = 0; i < 10; i++) {
    const [hi0, lo0] = mulhilo(0xd2511f53, c0);
    const [hi1, lo1] = mulhilo(0xcd9e8d57, c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
    k0 = (k0 + 0x9e3779b9) >>> 0;
    k1 = (k1 + 0xbb67ae85) >>> 0;
  }
  return [c0, c1, c2, c3];
}

/** The sampler's Gumbel noise for token v at `step` of a row seeded with `seed`, in float64. */
export function gumbel64(seed: number, step: number, v: number): number {
  const x = philox4x32([v, step, 0, 0], [seed % 2 ** 32, Math.floor(seed / 2 ** 32)])[0]!;
  const u = (Math.floor(x / 256) + 0.5) / 2 ** 24;
  return -Math.log(-Math.log(u));
}

/** Gumbel-max over kept tokens: the id and the gap between the best and second-best scores. */
export function gumbelDraw64(
  z: ArrayLike<number>,
  kept: boolean[],
  seed: number,
  step: number,
): { id: number; gap: number } {
  let best = -Infinity;
  let second = -Infinity;
  let id = -1;
  for (let v = 0; v < z.length; v++) {
    if (!kept[v] || z[v] === -Infinity) continue;
    const s = z[v]! + gumbel64(seed, step, v);
    if (s > best) {
      second = best;
      best = s;
      id = v;
    } else if (s > second) second = s;
  }
  return { id, gap: best - second };
}
