/**
 * Scoring text: the log-probability of every token given the ones before it, and perplexity by
 * Hugging Face's "Perplexity of fixed-length models" method (sliding windows), computed on the GPU.
 *
 * A window [b, e) of the ids runs through the model from an empty cache (positions 0..e-b-1, as HF
 * feeds `ids[b:e]`), in chunks of at most CHUNK tokens whose K/V the cache keeps for the next
 * chunk. Each chunk's logits [C, V] go to the logprobs kernel with the next token as the target, and
 * only the rows of scored tokens are copied into one read-back buffer: (2 + 2N) words per scored
 * token, never the logits. Windows start every `stride` tokens; window w scores the tokens from the
 * previous window's end to its own end (the first window every token but its first), so each token
 * 1..n-1 is scored exactly once, with at least window - stride tokens of context after the first.
 */
import { CallErrors } from '../gpu/call-errors.js';
import { ContextOverflowError, InvalidOptionError, PromptError } from '../errors.js';
import { Owned } from '../gpu/common.js';
import type { Dispatch, GpuTensor } from '../gpu/common.js';
import {
  decodeLogprobs,
  LogprobsKernel,
  logprobsKernelFor,
  logprobsRowWords,
  MAX_TOP_LOGPROBS,
} from '../kernels/logprobs.js';
import { checkOptions, optionNames } from '../sampling/names.js';
import type { KVCache } from './kvcache.js';
import { ForwardPlan, rowMeta, type GPT2Model } from './model.js';

/** Tokens per forward chunk: its logits [CHUNK, 50257] f32 (51 MB) stay inside one storage binding. */
const CHUNK = 256;
// STORAGE | COPY_DST | COPY_SRC, and MAP_READ | COPY_DST, as numbers (GPUBufferUsage may be absent at import).
const STORAGE = 0x80 | 0x8 | 0x4;

export interface ScoreOptions {
  /** Text or ids before the scored text: conditions it, is not scored itself. */
  context?: string | readonly number[];
  /** Alternatives reported per token, 0..20 (default 0). */
  top?: number;
  /** Context window of each forward (default and maximum: the model's n_positions). */
  window?: number;
  /** Tokens between window starts when the text is longer than `window` (default window / 2). */
  stride?: number;
  signal?: AbortSignal;
}

export interface TokenScore {
  /** Index of the token in `ScoreResult.ids` (the context first). */
  position: number;
  id: number;
  /** ln p(id | the tokens before it). */
  logprob: number;
  /** Whether id was the most likely token there (ties: the smaller id). */
  greedy: boolean;
  /** The `top` most likely tokens there, best first. */
  top?: Array<{ id: number; logprob: number }>;
}

export interface ScoreResult {
  /**
   * The scored tokens in order: every token of the text (the context excluded) but, without a
   * context, its first; with stride == window also each later window's first token (HF's method).
   */
  tokens: TokenScore[];
  /** The ids the model saw, context first. */
  ids: number[];
  /** Sum of the tokens' log-probabilities. */
  logprob: number;
  /** Read-back bytes of the whole call (for reports and tests). */
  readbackBytes: number;
  /** The windows used: start, end and scored tokens of each. */
  windows: Array<{ start: number; end: number; scored: number; nll: number }>;
}

export interface PerplexityResult {
  /** exp of the mean negative log-likelihood over every scored token (each token 1..n-1 once). */
  perplexity: number;
  /**
   * The value HF's "Perplexity of fixed-length models" code prints: window w's mean NLL weighted by
   * (its label count - 1), which under-weights every window after the first by one token.
   */
  perplexityHf: number;
  /** Tokens scored. */
  tokens: number;
  /** Sum of their negative log-likelihoods. */
  nll: number;
  windows: ScoreResult['windows'];
}

interface Window {
  start: number;
  end: number;
  /** First position (absolute) whose token is scored: tokens [firstScored, end) are. */
  firstScored: number;
}

/** HF's windows: starts 0, stride, 2 stride, ... until a window reaches the end. */
export function slidingWindows(n: number, window: number, stride: number, firstScored = 1): Window[] {
  const res: Window[] = [];
  let prevEnd = 0;
  for (let b = 0; b < n; b += stride) {
    const e = Math.min(b + window, n);
    res.push({ start: b, end: e, firstScored: Math.max(prevEnd, b + 1, firstScored) });
    prevEnd = e;
    if (e === n) break;
  }
  return res;
}

function toIds(model: GPT2Model, x: string | readonly number[], what: string): number[] {
  if (typeof x === 'string') return x === '' ? [] : model.tokenizer.encode(x);
  if (!Array.isArray(x))
    throw new InvalidOptionError(`${what} must be a string or an array of token ids, got ${typeof x}`);
  return Array.from(x);
}

function intOption(v: unknown, name: string, lo: number, hi: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)
    throw new InvalidOptionError(`${name} must be an integer in [${lo}, ${hi}], got ${String(v)}`);
  return v;
}

const SCORE_OPTIONS = optionNames<ScoreOptions>({ context: true, top: true, window: true, stride: true, signal: true });
const PERPLEXITY_OPTIONS = SCORE_OPTIONS.filter((k) => k !== 'top' && k !== 'context');

/** The validated inputs of a score call. */
interface ScoreInput {
  ids: number[];
  top: number;
  windows: Window[];
  /** The positions scored, ascending (each window's [firstScored, end) in turn). */
  positions: number[];
}

function scoreInput(model: GPT2Model, text: string | readonly number[], o: ScoreOptions): ScoreInput {
  checkOptions(o, SCORE_OPTIONS, 'score option');
  const context = o.context === undefined ? [] : toIds(model, o.context, 'context');
  const body = toIds(model, text, 'text');
  const ids = [...context, ...body];
  if (body.length === 0) throw new PromptError('score: the text is empty: give at least one token');
  if (ids.length < 2) throw new PromptError('score: one token and no context: nothing to predict it from');
  model.checkIds(ids, 'score input');
  const P = model.config.n_positions;
  const top = intOption(o.top, 'top', 0, MAX_TOP_LOGPROBS, 0);
  const window = intOption(o.window, 'window', 2, P, P);
  const stride = intOption(o.stride, 'stride', 1, window, Math.max(1, Math.floor(window / 2)));
  if (ids.length > window && o.window === undefined && o.stride === undefined)
    throw new ContextOverflowError(
      `score: ${ids.length} tokens do not fit the ${P}-token window; give { window, stride } to score them in sliding windows (e.g. window ${P}, stride ${P / 2}), or use perplexity()`,
    );
  const windows = slidingWindows(ids.length, window, stride, Math.max(1, context.length));
  const positions = windows.flatMap((w) => Array.from({ length: w.end - w.firstScored }, (_, i) => w.firstScored + i));
  return { ids, top, windows, positions };
}

/** Scores `text` (after `context`); see ScoreOptions. */
export async function score(
  model: GPT2Model,
  text: string | readonly number[],
  opts: ScoreOptions = {},
): Promise<ScoreResult> {
  model.checkAlive();
  const input = scoreInput(model, text, opts);
  const kernel = await logprobsKernelFor(model.ctx, model.profile.logprobsWg);
  const words = logprobsRowWords(input.top);
  const scored = input.positions.length;
  const owned = new Owned(model.ctx);
  const maxLen = Math.max(...input.windows.map((w) => w.end - w.start));
  let cache: KVCache | undefined;
  let run: WindowRunner | undefined;
  try {
    cache = await model.createCache({ capacity: Math.max(2, maxLen) });
    const errors = new CallErrors(model.ctx); // this call's GPU errors, nobody else's
    const runner = (run = errors.run(() => new WindowRunner(model, cache!, kernel, owned, input)));
    for (const w of input.windows) {
      opts.signal?.throwIfAborted();
      errors.run(() => runner.window(w));
    }
    const out = new Uint32Array(
      await errors.run(() => model.ctx.readBuffer(runner.result.buffer, 0, scored * words * 4)),
    );
    await errors.check();
    return scoreResult(input, decodeLogprobs(out, scored, input.top), scored * words * 4);
  } finally {
    run?.destroy();
    cache?.destroy();
    owned.destroy();
  }
}

function scoreResult(input: ScoreInput, rows: ReturnType<typeof decodeLogprobs>, bytes: number): ScoreResult {
  const tokens: TokenScore[] = rows.map((r, i) => {
    const position = input.positions[i]!;
    const id = input.ids[position]!;
    return { position, id, logprob: r.logprob, greedy: r.argmax === id, ...(input.top > 0 ? { top: r.top } : {}) };
  });
  let next = 0;
  const windows = input.windows.map((w) => {
    const part = tokens.slice(next, (next += w.end - w.firstScored));
    return { start: w.start, end: w.end, scored: part.length, nll: -part.reduce((s, t) => s + t.logprob, 0) };
  });
  const logprob = tokens.reduce((s, t) => s + t.logprob, 0);
  return { tokens, ids: input.ids, logprob, readbackBytes: bytes, windows };
}

/** A forward plan of `chunk` tokens that computes the logits of R of them, and its logprobs dispatch. */
interface ChunkPlan {
  plan: ForwardPlan;
  /** Absent for R = 0 scored rows: the plan then only fills the cache (one dummy logits row). */
  logprobs?: Dispatch;
}

/**
 * Runs windows chunk by chunk into one result buffer of (2 + 2N) words per scored token. The rows
 * a chunk scores are contiguous, so its plan computes the LM head for exactly those (plans are
 * kept per row count: a few per call), and their kernel output is copied as one range.
 */
class WindowRunner {
  readonly result: GpuTensor; // [scored, words] u32
  private readonly plans = new Map<number, ChunkPlan>();
  private readonly targets: GPUBuffer; // [chunk] u32
  private readonly out: GPUBuffer; // [chunk, words] u32
  private readonly chunk: number;
  private readonly rowBytes: number;
  /** Result rows written so far (scored positions ascend across chunks and windows). */
  private written = 0;

  constructor(
    private readonly model: GPT2Model,
    private readonly cache: KVCache,
    private readonly kernel: LogprobsKernel,
    private readonly owned: Owned,
    private readonly input: ScoreInput,
  ) {
    this.chunk = Math.min(CHUNK, Math.max(...input.windows.map((w) => w.end - w.start)));
    this.rowBytes = logprobsRowWords(input.top) * 4;
    const rows = input.positions.length;
    this.result = {
      buffer: owned.buffer('score.result', rows * this.rowBytes, STORAGE),
      offset: 0,
      shape: [rows, logprobsRowWords(input.top)],
      dtype: 'u32',
    };
    this.targets = owned.buffer('score.targets', this.chunk * 4, STORAGE);
    this.out = owned.buffer('score.out', this.chunk * this.rowBytes, STORAGE);
  }

  destroy(): void {
    for (const p of this.plans.values()) p.plan.destroy();
  }

  window(w: Window): void {
    for (let s = w.start; s < w.end; s += this.chunk) this.runChunk(w, s, Math.min(this.chunk, w.end - s));
  }

  private planFor(R: number): ChunkPlan {
    let p = this.plans.get(R);
    if (p) return p;
    const plan = new ForwardPlan(this.model, this.cache, this.chunk, Math.max(1, R));
    const view = (buffer: GPUBuffer, shape: number[]): GpuTensor => ({ buffer, offset: 0, shape, dtype: 'u32' });
    const logprobs =
      R > 0
        ? this.kernel.bind(this.owned, {
            logits: plan.logits,
            targets: view(this.targets, [R]),
            out: view(this.out, [R, logprobsRowWords(this.input.top)]),
            top: this.input.top,
          })
        : undefined;
    this.plans.set(R, (p = { plan, ...(logprobs ? { logprobs } : {}) }));
    return p;
  }

  /** Positions [s, s + n) of window w (absolute): the forward, the kernel, the scored rows copied out. */
  private runChunk(w: Window, s: number, n: number): void {
    const ids = this.input.ids;
    // Row i predicts the token at s + i + 1, scored when that lies in [firstScored, end): rows [first, first + count).
    const first = Math.max(0, w.firstScored - s - 1);
    const count = Math.max(0, Math.min(n, w.end - s - 1) - first);
    const { plan, logprobs } = this.planFor(count);
    plan.write({
      ids: ids.slice(s, s + n),
      meta: rowMeta(0, s - w.start, n),
      lastIdx: count > 0 ? Uint32Array.from({ length: count }, (_, j) => first + j) : Uint32Array.of(n - 1),
    });
    if (count === 0) {
      this.model.submit(plan.dispatches);
      return;
    }
    const targets = Uint32Array.from({ length: count }, (_, j) => ids[s + first + j + 1]!);
    this.model.ctx.device.queue.writeBuffer(this.targets, 0, targets);
    const dst = this.written * this.rowBytes;
    this.written += count;
    this.model.submit([...plan.dispatches, logprobs!], (enc) =>
      enc.copyBufferToBuffer(this.out, 0, this.result.buffer, dst, count * this.rowBytes),
    );
  }
}

/** Perplexity of `text` by sliding windows (default window n_positions, stride window / 2). */
export async function perplexity(
  model: GPT2Model,
  text: string | readonly number[],
  opts: Omit<ScoreOptions, 'top' | 'context'> = {},
): Promise<PerplexityResult> {
  checkOptions(opts, PERPLEXITY_OPTIONS, 'perplexity option');
  const window = opts.window ?? model.config.n_positions;
  const stride = opts.stride ?? Math.max(1, Math.floor(window / 2));
  return perplexityOf(await score(model, text, { ...opts, window, stride }));
}

/** The perplexities of a score result (see PerplexityResult for the two definitions). */
export function perplexityOf(r: ScoreResult): PerplexityResult {
  const nll = -r.logprob;
  const n = r.tokens.length;
  // HF's loop: loss_w = mean NLL of window w, weighted by (trg_len_w - 1), trg_len_w = end_w - prevEnd.
  let hfSum = 0;
  let hfCount = 0;
  let prevEnd = 0;
  for (const w of r.windows) {
    const labels = w.end - prevEnd;
    prevEnd = w.end;
    if (w.scored === 0) continue;
    hfSum += (w.nll / w.scored) * (labels - 1);
    hfCount += labels - 1;
  }
  return {
    perplexity: Math.exp(nll / n),
    perplexityHf: hfCount > 0 ? Math.exp(hfSum / hfCount) : Math.exp(nll / n),
    tokens: n,
    nll,
    windows: r.windows,
  };
}
