/**
 * Hard bans: the token ids a row may not draw next, with transformers' semantics
 * (generation/logits_process.py):
 *   - NoRepeatNGramLogitsProcessor (noRepeatNgramSize n): with ids h of length L, when L + 1 >= n,
 *     every token t such that h[L-n+1 ..] followed by t is an n-gram of h is banned (n = 1: every
 *     token of h).
 *   - NoBadWordsLogitsProcessor (badWordsIds): a one-token sequence is always banned; a sequence
 *     s of length k > 1, not longer than h, bans s[k-1] when h ends with s[0 .. k-2]. Sequences that
 *     are just an EOS id are dropped, as transformers drops them.
 *   - SuppressTokensLogitsProcessor (suppressTokens): always banned.
 *   - MinNewTokensLengthLogitsProcessor (minNewTokens): the end ids (EOS, stop token ids) are
 *     banned while fewer new tokens than that were drawn; the sampler counts them on the GPU.
 * h is what the penalties count: the row's context, the prompt and the new tokens.
 *
 * Static bans (suppressTokens, one-token bad words) are fixed per row; dynamic ones (n-grams,
 * longer bad words) depend on h and are computed here on the host, once per step (BanTracker), or
 * from a whole history at once (bannedNext).
 */
import type { NormalizedSampling } from '../kernels/sampler.js';
import { InvalidOptionError } from '../errors.js';

type BanOptions = Pick<NormalizedSampling, 'noRepeatNgramSize' | 'badWordsIds' | 'suppressTokens'>;

/** The bad words that count: those that are not just an EOS id. */
function badWords(o: BanOptions, eosIds: readonly number[]): number[][] {
  return o.badWordsIds.filter((w) => !(w.length === 1 && eosIds.includes(w[0]!)));
}

/** Ids banned at every step: suppressTokens and one-token bad words (sorted, distinct). */
export function staticBans(o: BanOptions, eosIds: readonly number[]): number[] {
  const ids = new Set(o.suppressTokens);
  for (const w of badWords(o, eosIds)) if (w.length === 1) ids.add(w[0]!);
  return [...ids].sort((a, b) => a - b);
}

/**
 * Throws InvalidOptionError when the bans of the first step leave no id at all: the static ones
 * (staticBans) and, with minNewTokens, the ids it holds back (`heldBack`: EOS, stop ids). Sampling
 * would have nothing to draw from (transformers' greedy search returns id 0 there, its sampling
 * fails on an all -inf distribution).
 */
export function checkSomeIdAllowed(
  o: BanOptions & { minNewTokens: number },
  eosIds: readonly number[],
  heldBack: readonly number[],
  vocab: number,
  what: string,
): void {
  const ids = new Set(staticBans(o, eosIds));
  if (o.minNewTokens > 0) for (const id of heldBack) ids.add(id);
  if (ids.size >= vocab)
    throw new InvalidOptionError(
      `${what}: suppressTokens and one-token badWordsIds${o.minNewTokens > 0 ? ' (with the ids minNewTokens holds back)' : ''} ban all ${vocab} token ids, so no token could be generated; leave at least one allowed`,
    );
}

/** Whether the row's bans depend on its ids (n-grams, bad words of two tokens or more). */
export function hasDynamicBans(o: BanOptions, eosIds: readonly number[]): boolean {
  return o.noRepeatNgramSize > 0 || badWords(o, eosIds).some((w) => w.length > 1);
}

/** Whether h ends with w[0 .. w.length - 2] (and w is not longer than h, transformers' rule). */
function completes(h: readonly number[], w: readonly number[]): boolean {
  const k = w.length;
  if (k > h.length) return false;
  for (let i = 0; i < k - 1; i++) if (h[h.length - (k - 1) + i] !== w[i]) return false;
  return true;
}

/**
 * Every id banned after the ids `h` (static and dynamic), computed from scratch: beam search's
 * per-hypothesis bans, and the reference the incremental tracker is tested against.
 */
export function bannedNext(h: readonly number[], o: BanOptions, eosIds: readonly number[]): Set<number> {
  const out = new Set(staticBans(o, eosIds));
  const n = o.noRepeatNgramSize;
  const L = h.length;
  if (n > 0 && L + 1 >= n) {
    for (let s = 0; s + n <= L; s++) {
      let match = true;
      for (let j = 0; j < n - 1 && match; j++) match = h[s + j] === h[L - n + 1 + j];
      if (match) out.add(h[s + n - 1]!);
    }
  }
  for (const w of badWords(o, eosIds)) if (w.length > 1 && completes(h, w)) out.add(w[w.length - 1]!);
  return out;
}

/**
 * A row's dynamic bans kept up to date as its ids grow: an index of the n-grams seen (prefix ->
 * tokens that followed it), so each step costs O(n), not O(length).
 */
export class BanTracker {
  private readonly h: number[];
  private readonly n: number;
  private readonly grams = new Map<string, Set<number>>();
  private readonly words: number[][];

  constructor(o: BanOptions, eosIds: readonly number[], history: readonly number[]) {
    this.n = o.noRepeatNgramSize;
    this.words = badWords(o, eosIds).filter((w) => w.length > 1);
    this.h = [];
    for (const t of history) this.push(t);
  }

  /** The row drew (or was fed) `token`. */
  push(token: number): void {
    const h = this.h;
    h.push(token);
    const n = this.n;
    if (n > 0 && h.length >= n) {
      const key = h.slice(h.length - n, h.length - 1).join(',');
      let next = this.grams.get(key);
      if (!next) this.grams.set(key, (next = new Set()));
      next.add(token);
    }
  }

  /** The ids banned for the next draw by n-grams and bad words (static bans not included). */
  next(): number[] {
    const h = this.h;
    const n = this.n;
    const out = new Set<number>();
    if (n > 0 && h.length + 1 >= n) {
      for (const t of this.grams.get(h.slice(h.length - n + 1).join(',')) ?? []) out.add(t);
    }
    for (const w of this.words) if (completes(h, w)) out.add(w[w.length - 1]!);
    return [...out];
  }
}
