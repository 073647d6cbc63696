/**
 * Runs a Job: one scheduler unit per (prompt, choice), live text for streams (held back while it
 * could still turn into a stop string), stop strings cut off as OpenAI does (the text ends before
 * the stop string), and logprobs (streamed with the text of their tokens).
 *
 * Logprobs are the model's raw distribution (log-softmax of the logits), not the sampler's after
 * temperature, penalties, top-k/p. The completion's come from the generation itself
 * (GenerateOptions.logprobs: computed on the GPU in the step that draws each token); an echoed
 * prompt's from model.score over the prompt, once per prompt.
 */
import type { GenerateResult, TokenLogprob } from '../engine/generate.js';
import type { Model } from '../engine/engine.js';
import { seedOf, type Job } from './request.js';
import type { Scheduler, Unit } from './scheduler.js';

export type FinishReason = 'stop' | 'length';

/** One token's log-probability entry (null logprob and top for a text's first token). */
export interface LogprobEntry {
  id: number;
  token: string;
  logprob: number | null;
  top: Array<{ token: string; logprob: number }> | null;
  /** Character offset of the token in prompt + completion. */
  offset: number;
}

export interface ChoiceResult {
  index: number;
  promptIndex: number;
  /** The completion (without the prompt, without the stop string). */
  text: string;
  tokens: number[];
  finishReason: FinishReason;
  /** For echo the prompt's tokens first, then the completion's; absent without logprobs. */
  logprobs?: LogprobEntry[];
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/**
 * What a stream writes: live text of a choice (with logprobs, the entries of the tokens that text
 * completes), a choice done (the rest of its text and of its entries), the end.
 */
export interface StreamSink {
  text(index: number, text: string, logprobs?: LogprobEntry[]): void;
  done(choice: ChoiceResult, rest: string, restLogprobs?: LogprobEntry[]): void;
}

/** The earliest stop string in `text`: where the kept text ends, or -1. */
export function stopCut(text: string, stops: readonly string[]): number {
  let end = Infinity;
  let cut = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && i + s.length < end) {
      end = i + s.length;
      cut = i;
    }
  }
  return cut;
}

/** Length of the longest suffix of `text` that begins some stop string (text that may not be sent yet). */
function heldBack(text: string, stops: readonly string[]): number {
  let held = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > held; k--) {
      if (text.endsWith(s.slice(0, k))) {
        held = k;
        break;
      }
    }
  }
  return held;
}

/** Streams one choice's text: pieces in, the part that can no longer become a stop string out. */
class ChoiceText {
  full = '';
  sent = 0;
  constructor(private readonly stops: readonly string[]) {}
  push(piece: string): string {
    this.full += piece;
    const cut = stopCut(this.full, this.stops);
    const upto = cut >= 0 ? cut : this.full.length - heldBack(this.full, this.stops);
    if (upto <= this.sent) return '';
    const out = this.full.slice(this.sent, upto);
    this.sent = upto;
    return out;
  }
  /** What remains to send of the final text. */
  rest(final: string): string {
    return final.length > this.sent ? final.slice(this.sent) : '';
  }
}

/** A position's log-prob and alternatives (from model.score or the generation). */
type PositionLogprob = Pick<TokenLogprob, 'logprob' | 'top'>;

/** The logprob entries of `ids`, the first at text offset `base`, id i's log-prob `of(i)` (none: null). */
function entries(
  model: Model,
  ids: readonly number[],
  base: number,
  of: (i: number) => PositionLogprob | undefined,
): LogprobEntry[] {
  const at = new EntryCursor(model, base);
  return ids.map((id, i) => at.next(id, of(i)));
}

/** Builds consecutive logprob entries, each token's offset the previous one's plus its text length. */
class EntryCursor {
  constructor(
    private readonly model: Model,
    private offset: number,
  ) {}
  next(id: number, s: PositionLogprob | undefined): LogprobEntry {
    const text = (t: number): string => this.model.tokenizer.decode([t]);
    const token = text(id);
    const e: LogprobEntry = {
      id,
      token,
      logprob: s ? s.logprob : null,
      top: s ? (s.top ?? []).map((t) => ({ token: text(t.id), logprob: t.logprob })) : null,
      offset: this.offset,
    };
    this.offset += token.length;
    return e;
  }
}

/**
 * A streamed choice's text and logprob entries: a token's entry goes out in the chunk that sends the
 * last of its text (a token held back with a possible stop string waits with it; tokens past a stop
 * string go out with the choice's end), so the entries streamed are those of the choice's
 * `logprobs`, in order. With echo the prompt's text and entries (from its score) open the stream:
 * until they have gone out, the completion's chunks wait here.
 */
class LiveChoice {
  private readonly text: ChoiceText;
  /** Entries not sent yet, each with the length of the completion text once its token is in. */
  private pending: Array<{ entry: LogprobEntry; end: number }> = [];
  private held: Array<[string, LogprobEntry[] | undefined]> | null;
  /** Entries sent so far (an echoed prompt's included). */
  sentEntries = 0;
  constructor(
    stops: readonly string[],
    private readonly send: (text: string, logprobs?: LogprobEntry[]) => void,
    private readonly cursor: EntryCursor | undefined,
    opened: boolean,
  ) {
    this.text = new ChoiceText(stops);
    this.held = opened ? null : [];
  }
  token(piece: string, id: number, lp: TokenLogprob | undefined): void {
    const t = this.text.push(piece);
    if (!this.cursor) {
      if (t) this.out(t);
      return;
    }
    this.pending.push({ entry: this.cursor.next(id, lp), end: this.text.full.length });
    const sent = this.text.sent;
    const done = this.pending.filter((p) => p.end <= sent).map((p) => p.entry);
    this.pending = this.pending.filter((p) => p.end > sent);
    if (t || done.length) this.out(t, done);
  }
  /** Sends the echoed prompt (text and entries), then whatever waited for it. */
  open(prompt: string, logprobs: LogprobEntry[]): void {
    this.send(prompt, logprobs);
    this.sentEntries += logprobs.length;
    const held = this.held ?? [];
    this.held = null;
    for (const [t, e] of held) this.send(t, e);
  }
  /** The text still to send of the final text. */
  rest(final: string): string {
    return this.text.rest(final);
  }
  private out(t: string, logprobs?: LogprobEntry[]): void {
    this.sentEntries += logprobs?.length ?? 0;
    if (this.held) this.held.push([t, logprobs]);
    else this.send(t, logprobs);
  }
}

/** OpenAI's finish reasons: EOS and stop strings are 'stop', the token budget 'length'. */
function finishOf(r: GenerateResult['sequences'][number]): FinishReason {
  return r.finishReason === 'length' ? 'length' : 'stop';
}

/**
 * Runs every choice of `job`; resolves with the choices in index order (prompt i, choice j at
 * i * n + j) and the usage. With a sink, text and its tokens' logprobs go out as they are
 * generated (an echoed prompt's first, once scored). Rejects with the first failure; `signal`
 * cancels (queued units dropped).
 */
export async function runJob(
  model: Model,
  scheduler: Scheduler,
  job: Job,
  outer: AbortSignal,
  sink?: StreamSink,
): Promise<{ choices: ChoiceResult[]; usage: Usage }> {
  // A failed choice cancels the request's other choices (queued ones are dropped).
  const ac = new AbortController();
  const cancel = (): void => ac.abort();
  if (outer.aborted) cancel();
  else outer.addEventListener('abort', cancel, { once: true });
  const signal = ac.signal;
  const echoLogprobs = job.echo && job.logprobs !== null;
  const liveLogprobs = sink !== undefined && job.logprobs !== null;
  // An echoed prompt's entries come from its score (position 0 has none), the completion's from the
  // generation; built once per prompt and shared by its choices.
  const echoed = new Map<number, Promise<LogprobEntry[]>>();
  const echoEntries = (i: number): Promise<LogprobEntry[]> => {
    if (!echoed.has(i)) {
      const ids = job.prompts[i]!;
      const score = ids.length < 2 ? Promise.resolve(undefined) : scheduler.score(ids, job.logprobs ?? 0, signal);
      echoed.set(
        i,
        score.then((sc) => {
          // The score's entries by position (position 0 has none).
          const pos = new Map(sc?.tokens.map((t) => [t.position, t]) ?? []);
          return entries(model, ids, 0, (p) => pos.get(p));
        }),
      );
    }
    return echoed.get(i)!;
  };
  // Where the completion's entries start: after the echoed prompt's tokens, or the prompt's text.
  const completionBase = (i: number): number =>
    job.echo
      ? job.prompts[i]!.reduce((a, id) => a + model.tokenizer.decode([id]).length, 0)
      : job.promptTexts[i]!.length;
  const slots = job.prompts.flatMap((ids, i) => {
    const base = job.logprobs !== null ? completionBase(i) : 0;
    return Array.from({ length: job.n }, (_, j) => {
      const index = i * job.n + j;
      const cursor = liveLogprobs ? new EntryCursor(model, base) : undefined;
      const send = (t: string, e?: LogprobEntry[]): void => sink?.text(index, t, e);
      const live = new LiveChoice(job.stop, send, cursor, !(sink && echoLogprobs));
      // A stream with echo and logprobs opens with the prompt's text and entries, once scored.
      const opened =
        sink && echoLogprobs ? echoEntries(i).then((e) => live.open(job.promptTexts[i]!, e)) : Promise.resolve();
      opened.catch(() => {}); // a failed score fails the choice in `finish`, which awaits it
      return { ids, i, j, index, base, live, opened };
    });
  });
  const gen: Array<Promise<GenerateResult | undefined>> = [];
  if (job.maxTokens === 0) slots.forEach(() => gen.push(Promise.resolve(undefined)));
  else {
    const units: Unit[] = slots.map((s) => {
      const seed = seedOf(job, s.j);
      return {
        ids: s.ids,
        opts: {
          ...job.sampling,
          ...(seed === undefined ? {} : { seed }),
          maxNewTokens: job.maxTokens,
          stopStrings: job.stop.length ? job.stop : undefined,
          stopAtEos: job.stopAtEos,
          ...(job.logprobs === null ? {} : { logprobs: job.logprobs }),
        },
        onToken: sink ? (ev) => s.live.token(ev.text, ev.token, ev.logprob) : undefined,
      };
    });
    gen.push(...scheduler.submit(units, signal));
  }
  const finish = async (s: (typeof slots)[number], r: GenerateResult | undefined): Promise<ChoiceResult> => {
    const seq = r?.sequences[0];
    const engineText = seq?.text ?? '';
    const cut = job.stop.length && seq?.finishReason === 'stop' ? stopCut(engineText, job.stop) : -1;
    const text = cut >= 0 ? engineText.slice(0, cut) : engineText;
    const tokens = seq?.tokens ?? [];
    const choice: ChoiceResult = {
      index: s.index,
      promptIndex: s.i,
      text,
      tokens,
      finishReason: seq ? finishOf(seq) : 'length',
    };
    if (job.logprobs !== null) {
      const completion = entries(model, tokens, s.base, (k) => seq?.logprobs?.[k]);
      choice.logprobs = job.echo ? [...(await echoEntries(s.i)), ...completion] : completion;
    }
    await s.opened;
    sink?.done(choice, s.live.rest(text), choice.logprobs?.slice(s.live.sentEntries));
    return choice;
  };
  // Every promise is awaited (no unhandled rejection when one fails first); the first failure is
  // the answer (the others it cancelled fail with AbortError).
  let first: { error: unknown } | undefined;
  const done = gen.map((p, k) =>
    p
      .then((r) => finish(slots[k]!, r))
      .catch((e: unknown) => {
        first ??= { error: e };
        cancel();
        throw e;
      }),
  );
  const settled = await Promise.allSettled(done);
  outer.removeEventListener('abort', cancel);
  if (first) throw first.error;
  const choices = settled.map((x) => (x as PromiseFulfilledResult<ChoiceResult>).value);
  const prompt_tokens = job.prompts.reduce((a, p) => a + p.length, 0);
  const completion_tokens = choices.reduce((a, c) => a + c.tokens.length, 0);
  return { choices, usage: { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens } };
}
