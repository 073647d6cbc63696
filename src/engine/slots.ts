/**
 * The slots of a generation: one typed record per sequence it advances (its cache row, position,
 * output, text streamer, finish state and listeners), what happens to a slot when a step's ids come
 * back (accept: streaming, EOS, stop strings, its token count) and when it is final (hand-over),
 * and the record of a run that the cached and uncached paths share.
 *
 * Slot i is row i of every step (its token, its logits, its sampler row) and of the result; its
 * cache row is `row`. A joining sequence (continuous batching) takes a parked slot over.
 */
import type { CallErrors } from '../gpu/call-errors.js';
import type { Owned } from '../gpu/common.js';
import type { RowBans, SamplerState } from '../kernels/sampler.js';
import { BanTracker, hasDynamicBans, staticBans } from '../sampling/bans.js';
import type {
  FinishReason,
  GeneratedSequence,
  GenerateOptions,
  GenerateStats,
  JoinQueue,
  SequenceDoneEvent,
  SequenceOptions,
  TokenEvent,
  TokenLogprob,
} from './generate-options.js';
import type { StepLogprobs } from './gen-logprobs.js';
import type { KVCache } from './kvcache.js';
import type { ForwardPlan, GPT2Model } from './model.js';
import { SlotFailure } from './slot-failure.js';
import type { GenIO } from './step-io.js';
import { TextStreamer, type Tokenizer } from './tokenizer.js';

/** Where a slot's events go. */
export interface SlotListeners {
  onToken?: (ev: TokenEvent) => void;
  onSequenceDone?: (ev: SequenceDoneEvent) => void;
}

/** One sequence of a generation. */
export interface Slot {
  /** The cache row the sequence lives in. */
  row: number;
  opts: SequenceOptions;
  listeners: SlotListeners;
  /** Cached mode: the position the next step feeds (= the row's tokens fed so far, queued steps included). */
  pos: number;
  /** New tokens accepted so far. */
  out: number[];
  /** With logprobs on (opts.logprobs): one entry per token of `out`. */
  logprobs?: TokenLogprob[];
  /** How many of `out` the cache row's context records (recordSlot). */
  recorded: number;
  streamer: TextStreamer;
  text: string;
  finished: FinishReason | null;
  /**
   * Final and handed over: onSequenceDone told, the cache row released (another generation may
   * use it), the history final. Its token is parked in every later step until a joiner takes the slot.
   */
  released: boolean;
  /** A joining sequence: when it joined, and when its first token came (0: not a joiner / not yet). */
  joinedAt: number;
  firstAt: number;
  /** Set when a listener threw a SlotFailure: the slot ended alone (handOver settles it). */
  failure?: SlotFailure;
  /** Its sampler row's hard bans: the static ids, and the tracker of its n-grams and bad words (if any). */
  bans: SlotBans;
}

/** A slot's hard bans on the host: its static ids and, when it has any, the per-step ones. */
export interface SlotBans {
  fixed: number[];
  /** Present when the row's bans depend on its ids: the host rewrites its mask before each draw. */
  tracker?: BanTracker;
}

/**
 * The hard bans of a sequence whose ids so far (context and prompt) are `history`: the sampler
 * row's initial masks (RowBans) and the slot's record. minNewTokens holds back its end ids: every
 * EOS id (whatever stopAtEos says, as transformers) and its stop token ids.
 */
export function bansOf(
  opts: SequenceOptions,
  eosIds: readonly number[],
  history: readonly number[],
): { init: RowBans; slot: SlotBans } {
  const o = opts.sampling;
  const fixed = staticBans(o, eosIds);
  const tracker = hasDynamicBans(o, eosIds) ? new BanTracker(o, eosIds, history) : undefined;
  const untilMin = o.minNewTokens > 0 ? [...new Set([...eosIds, ...opts.stopTokenIds])] : [];
  return {
    init: { always: tracker ? [...fixed, ...tracker.next()] : fixed, untilMin, dynamic: !!tracker },
    slot: { fixed, tracker },
  };
}

/**
 * Before a step that samples: the rows whose bans depend on their ids get this step's mask. Their
 * ids must all be known on the host (no step of theirs in flight: the run's depth is 1 then).
 */
export function writeBans(run: Pick<Run, 'slots' | 'model' | 'sampler'>): void {
  run.slots.forEach((s, i) => {
    const t = s.bans.tracker;
    if (t && !s.finished) run.model.kernels.sampler.setBans(run.sampler, i, [...s.bans.fixed, ...t.next()]);
  });
}

/** Whether some slot still drawing needs its bans rewritten between steps (pipelining off). */
export function needsHostBans(slots: readonly Slot[]): boolean {
  return slots.some((s) => s.bans.tracker !== undefined && !s.finished);
}

/** A slot for a sequence in cache row `row`; one asked for no tokens is final at once. */
export function newSlot(
  tokenizer: Tokenizer,
  row: number,
  opts: SequenceOptions,
  listeners: SlotListeners,
  bans: SlotBans,
  joinedAt = 0,
): Slot {
  return {
    bans,
    row,
    opts,
    listeners,
    pos: 0,
    out: [],
    ...(opts.logprobs === undefined ? {} : { logprobs: [] }),
    recorded: 0,
    streamer: new TextStreamer(tokenizer),
    text: '',
    finished: opts.maxNew === 0 ? 'length' : null,
    released: false,
    joinedAt,
    firstAt: 0,
  };
}

/**
 * How accepted tokens end a sequence: EOS (when stopAtEos), besides each slot's stop token ids,
 * stop strings and count; whether the text keeps what stopped it.
 */
export interface AcceptRules {
  eosIds: readonly number[];
  stopAtEos: boolean;
  /** Throws when the run must stop before another token is delivered (its model destroyed). */
  check?: () => void;
  includeStop: boolean;
}

/**
 * Takes one step's ids: ids[i] is slot i's token (lps[i] its log-probs, logprobs on); final slots
 * ignore theirs.
 */
export function acceptStep(
  slots: readonly Slot[],
  ids: Uint32Array,
  rules: AcceptRules,
  lps?: readonly TokenLogprob[],
): void {
  slots.forEach((slot, i) => {
    rules.check?.(); // a listener may have destroyed the model: nothing more reaches the others
    if (!slot.finished) acceptToken(slot, i, ids[i]!, rules, lps?.[i]);
  });
}

/** Appends a token to slot `index`, streams its text, and applies the stop rules. */
function acceptToken(slot: Slot, index: number, tok: number, rules: AcceptRules, lp?: TokenLogprob): void {
  slot.out.push(tok);
  const logprob = slot.logprobs && lp ? { logprob: lp } : {};
  if (slot.logprobs && lp) slot.logprobs.push(lp);
  slot.bans.tracker?.push(tok);
  const isEos = rules.stopAtEos && rules.eosIds.includes(tok);
  const isStopId = !isEos && slot.opts.stopTokenIds.includes(tok);
  // EOS has no text; a stop token's text is kept (completed at once: the sequence ends) unless not wanted.
  let piece = '';
  if (isStopId && rules.includeStop) piece = slot.streamer.push(tok) + slot.streamer.flush();
  else if (!isEos && !isStopId) piece = slot.streamer.push(tok);
  slot.text += piece;
  const event = { row: index, token: tok, text: piece, index: slot.out.length - 1, ...logprob };
  if (!notify(slot, () => slot.listeners.onToken?.(event))) return;
  if (isEos || isStopId) {
    slot.finished = isEos ? 'eos' : 'stop';
    return;
  }
  const stop = stopMatch(slot.text, slot.opts.stopStrings);
  if (stop !== undefined) {
    slot.finished = 'stop';
    // The surplus after the stop string is dropped; the stop string too unless it is wanted.
    slot.text = slot.text.slice(0, rules.includeStop ? stop.end : stop.start);
  } else if (slot.out.length >= slot.opts.maxNew) slot.finished = 'length';
}

/**
 * Calls one of `slot`'s listeners. A SlotFailure it throws ends the slot alone (false): final, its
 * tokens past those its cache row records dropped, so the row keeps what it held; anything else
 * it throws ends the run.
 */
function notify(slot: Slot, call: () => void): boolean {
  try {
    call();
    return true;
  } catch (e) {
    if (!(e instanceof SlotFailure)) throw e;
    slot.failure = e;
    slot.finished ??= 'stop';
    slot.out.length = slot.recorded;
    if (slot.logprobs) slot.logprobs.length = slot.out.length;
    return false;
  }
}

/** The first occurrence of the earliest-ending stop string in `text` (undefined: it holds none). */
function stopMatch(text: string, stops: readonly string[] | undefined): { start: number; end: number } | undefined {
  let best: { start: number; end: number } | undefined;
  for (const s of stops ?? []) {
    const i = text.indexOf(s);
    if (i >= 0 && (!best || i + s.length < best.end)) best = { start: i, end: i + s.length };
  }
  return best;
}

/** The slot's sequence as the result reports it. */
export function sequenceOf(slot: Slot): GeneratedSequence {
  const seq = { tokens: slot.out, text: slot.text, finishReason: slot.finished ?? 'length' };
  return slot.logprobs ? { ...seq, logprobs: slot.logprobs } : seq;
}

/**
 * Hands a final slot's sequence over: its text completed, its cache row released (free for
 * another generation: onSequenceDone may start the session's next turn at once), its listener told.
 */
export function handOver(slot: Slot, index: number, cache: KVCache, stats: GenerateStats): void {
  slot.text += slot.finished === 'stop' ? '' : slot.streamer.flush(); // a stop's text is complete (cut or flushed)
  slot.released = true;
  cache.release([slot.row]);
  if (slot.failure) slot.failure.settle();
  else slot.listeners.onSequenceDone?.({ row: index, sequence: sequenceOf(slot), stats });
}

/**
 * Brings the slot's cache row up to date with the tokens fed so far. A token chosen at step s is
 * fed at step s+1, so every accepted token but the newest is held; with `final` the newest is
 * appended too, pending (the context; a continued session feeds it first).
 */
export function recordSlot(cache: KVCache, slot: Slot, final: boolean): void {
  const n = slot.out.length;
  const upto = final ? n : Math.max(0, n - 1);
  for (let i = slot.recorded; i < upto; i++) {
    cache.append(slot.row, [slot.out[i]!]);
    if (i < n - 1 || !final) cache.commit(slot.row, 1);
  }
  slot.recorded = Math.max(slot.recorded, upto);
}

/** The token inputs of a general forward step being built: ids [T] and meta [T, 2] (row, pos). */
export interface StepTokens {
  ids: number[];
  meta: number[];
}

/**
 * Appends cache row `row`'s pending tokens (cache.pending: those whose K/V it does not hold) to a
 * step, and commits them (the step writes their K/V).
 */
export function feedPending(cache: KVCache, row: number, step: StepTokens): void {
  const from = cache.lengths[row]!;
  cache.pending(row).forEach((t, i) => {
    step.ids.push(t);
    step.meta.push(row, from + i);
  });
  cache.commit(row);
}

/** A generation in progress: what its cached and uncached paths share (built by generate.ts). */
export interface Run {
  model: GPT2Model;
  cache: KVCache;
  slots: Slot[];
  /** prompts[i]: the new tokens of slot i's sequence. */
  prompts: number[][];
  opts: GenerateOptions;
  rules: AcceptRules;
  sampler: SamplerState;
  /** GenerateOptions.logprobs on: the buffers each step writes them to (gen-logprobs.ts). */
  logprobs?: StepLogprobs;
  /** Owns the sampler state, the staging ring and the run's bind groups. */
  owned: Owned;
  /** Read-back buffers, one per step in flight ([slots] u32 each, then the step's logprobs when on). */
  staging: GPUBuffer[];
  io: GenIO;
  /** The generation's GPU errors: its GPU work runs in `errors.run` (never another caller's). */
  errors: CallErrors;
  stats: GenerateStats;
  tCall: number;
  /** Steps in flight at most. */
  depth: number;
  /** Steps the longest sequence needs (joiners may raise the count). */
  maxNew: number;
  /** Plans the run made or took: the session's cache keeps them when the run ends well. */
  plans: ForwardPlan[];
  /** GPU work the run must see finished before it frees what it made. */
  pending: Array<Promise<void>>;
  /** Hand each sequence over as soon as it is final (onSequenceDone with a session cache), not at the end. */
  early: boolean;
  /** With `early`: sequences waiting to join take parked slots (GenerateOptions.joiners). */
  joiners?: JoinQueue;
}
