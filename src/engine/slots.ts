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
import type { SamplerState } from '../kernels/sampler.js';
import type {
  FinishReason,
  GeneratedSequence,
  GenerateOptions,
  GenerateStats,
  JoinQueue,
  SequenceDoneEvent,
  SequenceOptions,
  TokenEvent,
} from './generate-options.js';
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
}

/** A slot for a sequence in cache row `row`; one asked for no tokens is final at once. */
export function newSlot(
  tokenizer: Tokenizer,
  row: number,
  opts: SequenceOptions,
  listeners: SlotListeners,
  joinedAt = 0,
): Slot {
  return {
    row,
    opts,
    listeners,
    pos: 0,
    out: [],
    recorded: 0,
    streamer: new TextStreamer(tokenizer),
    text: '',
    finished: opts.maxNew === 0 ? 'length' : null,
    released: false,
    joinedAt,
    firstAt: 0,
  };
}

/** How accepted tokens end a sequence: EOS (when stopAtEos), besides each slot's stop strings and count. */
export interface AcceptRules {
  eos: number;
  stopAtEos: boolean;
  /** Throws when the run must stop before another token is delivered (its model destroyed). */
  check?: () => void;
}

/** Takes one step's ids: ids[i] is slot i's token; final slots ignore theirs. */
export function acceptStep(slots: readonly Slot[], ids: Uint32Array, rules: AcceptRules): void {
  slots.forEach((slot, i) => {
    rules.check?.(); // a listener may have destroyed the model: nothing more reaches the others
    if (!slot.finished) acceptToken(slot, i, ids[i]!, rules);
  });
}

/** Appends a token to slot `index`, streams its text, and applies the stop rules. */
function acceptToken(slot: Slot, index: number, tok: number, rules: AcceptRules): void {
  slot.out.push(tok);
  const isEos = rules.stopAtEos && tok === rules.eos;
  const piece = isEos ? '' : slot.streamer.push(tok);
  slot.text += piece;
  const event = { row: index, token: tok, text: piece, index: slot.out.length - 1 };
  if (!notify(slot, () => slot.listeners.onToken?.(event))) return;
  if (isEos) {
    slot.finished = 'eos';
    return;
  }
  const stop = stopEnd(slot.text, slot.opts.stopStrings);
  if (stop !== undefined) {
    slot.finished = 'stop';
    slot.text = slot.text.slice(0, stop); // the surplus after the stop string is dropped
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
    return false;
  }
}

/** Where `text` ends for its earliest-ending stop string (undefined: it holds none). */
function stopEnd(text: string, stops: readonly string[] | undefined): number | undefined {
  let end: number | undefined;
  for (const s of stops ?? []) {
    const i = text.indexOf(s);
    if (i >= 0) end = Math.min(end ?? Infinity, i + s.length);
  }
  return end;
}

/** The slot's sequence as the result reports it. */
export function sequenceOf(slot: Slot): GeneratedSequence {
  return { tokens: slot.out, text: slot.text, finishReason: slot.finished ?? 'length' };
}

/**
 * Hands a final slot's sequence over: its text completed, its cache row released (free for
 * another generation: onSequenceDone may start the session's next turn at once), its listener told.
 */
export function handOver(slot: Slot, index: number, cache: KVCache, stats: GenerateStats): void {
  slot.text += slot.finished === 'stop' ? '' : slot.streamer.flush();
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
  /** Owns the sampler state, the staging ring and the run's bind groups. */
  owned: Owned;
  /** Read-back buffers, one per step in flight ([slots] u32 each). */
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
