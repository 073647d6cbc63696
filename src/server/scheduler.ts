/**
 * The server's queue in front of one session group (continuous batching).
 *
 * Every choice of every request is a unit: one prompt, one sequence, its own options. Units wait
 * in a bounded FIFO and run on the group's sessions (history reset first: completions are
 * stateless). The group merges turns started in the same tick into one batched run, whose width is
 * fixed, and lets a turn started later take the slot of a finished one at the run's next step. So
 * the queue shapes runs ("cohorts"):
 *
 * - no run going on: gather. Start when every free session has a unit; or once as many units wait
 *   as finished since the last start (clients answered together come back together) and nothing
 *   arrived for `batchWaitMs`; or at the latest 10 x max(batchWaitMs, half a decode step) after the
 *   first unit queued;
 * - a run going on with finished slots: start that many units now; they join it;
 * - a run going on with every slot busy: hold the units (a second run would interleave its steps
 *   with the first one's, and tiny runs waste the batch) until a slot frees, the run ends, as many
 *   units wait as the run holds, or the oldest has waited `maxHoldMs`.
 *
 * Cancelling (the client went away): a unit still queued is dropped. A unit that runs gets the
 * request's AbortSignal, alone or in a merged run: it stops at its next step (in a merged run its
 * slot ends alone and its session's row is free at once, for a queued unit to join the run in its
 * place), and the other units of the run go on untouched.
 *
 * Scoring (the logprobs of an echoed prompt; a completion's come with its generation) runs through
 * a second lane, one call at a time: each call makes a temporary cache and [256, vocab] logits, so
 * calls in parallel would only multiply the memory.
 */
import type { GenerateOptions, GenerateResult, TokenEvent } from '../engine/generate.js';
import type { Model, Session, SessionGroup } from '../engine/engine.js';
import type { ScoreResult } from '../engine/score.js';
import { AbortError } from '../errors.js';
import { ApiError } from './errors.js';

/** A merged run as the queue sees it: units with one key, `width` slots, `active` of them busy. */
interface Cohort {
  key: string;
  width: number;
  active: number;
}

/**
 * Units that may share a run: the same stopAtEos and logprobs (the group merges only those; the
 * rest may differ per row).
 */
const keyOf = (q: Unit): string => `${q.opts.stopAtEos ?? true}/${q.opts.logprobs ?? '-'}`;

/** A unit's generation options (the session's cache and rows are the scheduler's). */
export type UnitOptions = Omit<GenerateOptions, 'cache' | 'cacheRows' | 'signal' | 'numSequences' | 'onToken'>;

export interface Unit {
  ids: number[];
  opts: UnitOptions;
  onToken?: (ev: TokenEvent) => void;
}

interface Queued extends Unit {
  signal: AbortSignal;
  /** When it was queued (performance.now()). */
  at: number;
  resolve: (r: GenerateResult) => void;
  reject: (e: unknown) => void;
}

export interface SchedulerOptions {
  /** Sessions of the group: sequences advanced in one batched step (default 16). */
  maxBatch?: number;
  /** Units (and scoring calls) waiting at most; past it submit() throws a 429 (default 256). */
  maxQueue?: number;
  /** Gathering: an idle group starts once nothing arrived for this long (default 20 ms; see the module comment). */
  batchWaitMs?: number;
  /** Longest a unit is held while a run with no free slot goes on (default 2000 ms). */
  maxHoldMs?: number;
  /** The group's context window (default and maximum the model's n_positions). */
  context?: number;
}

export interface SchedulerStats {
  queued: number;
  running: number;
  scoring: number;
  started: number;
  /** Units started to share batched steps (merged with their cohort, or joining a run). */
  shared: number;
  completed: number;
  failed: number;
  /** Units dropped from the queue because their request was cancelled. */
  dropped: number;
}

export class Scheduler {
  readonly maxBatch: number;
  readonly maxQueue: number;
  readonly batchWaitMs: number;
  readonly maxHoldMs: number;
  /** Positions a unit may use: its prompt plus its new tokens. */
  readonly window: number;
  private readonly free: Session[];
  private readonly queue: Queued[] = [];
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** The newest merged run: its slots, and its units running (a slot is free while active < width). */
  private run: Cohort | undefined;
  /** Last arrival: gathering waits for a quiet spell after it. */
  private lastArrival = 0;
  /** Units finished since the last cohort started: gathering expects them back. */
  private returning = 0;
  /** Recent decode time per step (ms), from the results: gathering waits at most 5 steps. */
  private stepMs = 0;
  private lane: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly counts = { running: 0, scoring: 0, started: 0, shared: 0, completed: 0, failed: 0, dropped: 0 };

  private constructor(
    readonly model: Model,
    readonly group: SessionGroup,
    opts: Required<Omit<SchedulerOptions, 'context'>>,
  ) {
    this.maxBatch = opts.maxBatch;
    this.maxQueue = opts.maxQueue;
    this.batchWaitMs = opts.batchWaitMs;
    this.maxHoldMs = opts.maxHoldMs;
    this.window = group.cache.window;
    this.free = [...group.sessions].reverse(); // pop() hands out session 0 first
  }

  static async create(model: Model, opts: SchedulerOptions = {}): Promise<Scheduler> {
    const o = { maxBatch: 16, maxQueue: 256, batchWaitMs: 20, maxHoldMs: 2000, ...opts };
    for (const [k, v, lo] of [
      ['maxBatch', o.maxBatch, 1],
      ['maxQueue', o.maxQueue, 1],
      ['batchWaitMs', o.batchWaitMs, 0],
      ['maxHoldMs', o.maxHoldMs, 0],
    ] as const) {
      if (!Number.isInteger(v) || v < lo) throw new RangeError(`${k} must be an integer >= ${lo}, got ${String(v)}`);
    }
    const group = await model.createSessionGroup(
      o.maxBatch,
      o.context === undefined ? {} : { capacity: Math.min(o.context, model.config.n_positions) },
    );
    const { maxBatch, maxQueue, batchWaitMs, maxHoldMs } = o;
    return new Scheduler(model, group, { maxBatch, maxQueue, batchWaitMs, maxHoldMs });
  }

  get stats(): SchedulerStats {
    return { queued: this.queue.length, ...this.counts };
  }

  /** 429 with Retry-After when `more` waiting items would pass the bound. */
  private checkRoom(more: number): void {
    if (this.closed) throw new ApiError(503, 'The server is shutting down', 'server_error');
    if (more > this.maxQueue)
      throw new ApiError(
        400,
        `This request needs ${more} sequences (prompts x n); the server queues at most ${this.maxQueue}`,
        'invalid_request_error',
        'n',
      );
    const waiting = this.queue.length + this.counts.scoring;
    if (waiting + more > this.maxQueue)
      throw new ApiError(
        429,
        `The server is busy: ${waiting} sequences are waiting (at most ${this.maxQueue}); retry later`,
        'rate_limit_error',
        null,
        'queue_full',
        { 'retry-after': '1' },
      );
  }

  /**
   * Queues the units of one request (all or none: throws a 429 ApiError when the queue has no
   * room). Each promise resolves with its unit's result, or rejects with the engine's error or an
   * AbortError when `signal` fires before the unit ends.
   */
  submit(units: readonly Unit[], signal: AbortSignal): Array<Promise<GenerateResult>> {
    this.checkRoom(units.length);
    const out = units.map(
      (u) =>
        new Promise<GenerateResult>((resolve, reject) => {
          this.queue.push({ ...u, signal, at: performance.now(), resolve, reject });
        }),
    );
    signal.addEventListener('abort', () => this.dropAborted(), { once: true });
    this.lastArrival = performance.now();
    this.schedule();
    return out;
  }

  /** Removes the queued units whose request was cancelled. */
  private dropAborted(): void {
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const q = this.queue[i]!;
      if (!q.signal.aborted) continue;
      this.queue.splice(i, 1);
      this.counts.dropped++;
      q.reject(new AbortError('request cancelled while queued'));
    }
  }

  private wake(at: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.schedule();
      },
      Math.max(0, at - performance.now()),
    );
  }

  /** Starts, holds or gathers the queued units (see the module comment). */
  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.closed || this.queue.length === 0 || this.free.length === 0) return;
    const now = performance.now();
    const run = this.run;
    if (run && run.active > 0) {
      const key = run.key;
      // Finished slots of the run in flight take queued units now (no logit bias: see SessionGroup).
      for (let i = 0; i < this.queue.length && run.active < run.width && this.free.length;) {
        const q = this.queue[i]!;
        if (keyOf(q) !== key || Object.keys(q.opts.logitBias ?? {}).length) i++;
        else this.startOne(this.queue.splice(i, 1)[0]!, run);
      }
      if (this.queue.length === 0 || this.free.length === 0) return;
      const holdEnd = this.queue[0]!.at + this.maxHoldMs;
      if (this.queue.length < Math.max(2, run.active) && now < holdEnd) return this.wake(holdEnd);
      return this.startCohort();
    }
    // Gather: the units finished since the last start are likely to come back (closed-loop clients).
    const quietAt = this.lastArrival + this.batchWaitMs;
    const capAt = this.queue[0]!.at + 10 * Math.max(this.batchWaitMs, this.stepMs / 2);
    const expected = Math.min(this.returning, this.free.length);
    if (this.queue.length >= this.free.length || (this.queue.length >= expected && now >= quietAt) || now >= capAt)
      return this.startCohort();
    this.wake(this.queue.length >= expected ? Math.min(quietAt, capAt) : capAt);
  }

  /**
   * Starts queued units with the first one's key, as many as there are free sessions, in
   * one tick: the group merges them into one run (a cohort of one runs alone).
   */
  private startCohort(): void {
    const key = keyOf(this.queue[0]!);
    const picked: Queued[] = [];
    for (let i = 0; i < this.queue.length && picked.length < this.free.length;) {
      if (keyOf(this.queue[i]!) === key) picked.push(this.queue.splice(i, 1)[0]!);
      else i++;
    }
    this.returning = 0;
    const cohort: Cohort | undefined = picked.length > 1 ? { key, width: picked.length, active: 0 } : undefined;
    if (cohort) this.run = cohort;
    for (const q of picked) this.startOne(q, cohort);
  }

  /** Runs one unit on a free session, with its request's signal: in `cohort` (it shares steps), or alone. */
  private startOne(q: Queued, cohort: Cohort | undefined): void {
    const session = this.free.pop()!;
    this.counts.running++;
    this.counts.started++;
    if (cohort) {
      cohort.active++;
      this.counts.shared++;
    }
    let p: Promise<GenerateResult>;
    try {
      session.reset();
      p = session.generate(q.ids, { ...q.opts, ...(q.onToken ? { onToken: q.onToken } : {}), signal: q.signal });
    } catch (e) {
      p = Promise.reject(e);
    }
    // The books are kept as each unit settles; scheduling waits for the later finally, so that
    // units finishing at the same step are all counted first: a run whose every slot finished at
    // once has ended (the group takes no joiner then), and the next units gather instead of joining.
    const settle = (): void => {
      this.counts.running--;
      if (cohort) cohort.active--;
      if (this.run?.active === 0) this.run = undefined;
      this.free.push(session);
      this.returning++;
    };
    p.then(
      (r) => {
        settle();
        this.counts.completed++;
        if (r.stats.decodeMsPerToken > 0) this.stepMs = 0.8 * this.stepMs + 0.2 * r.stats.decodeMsPerToken;
        if (q.signal.aborted) q.reject(new AbortError('request cancelled'));
        else q.resolve(r);
      },
      (e) => {
        settle();
        this.counts.failed++;
        q.reject(e);
      },
    ).finally(() => this.schedule());
  }

  /**
   * model.score through the scoring lane (one call at a time, counted against the queue bound);
   * skipped with an AbortError when `signal` fired while it waited.
   */
  score(ids: readonly number[], top: number, signal: AbortSignal): Promise<ScoreResult> {
    this.checkRoom(1);
    this.counts.scoring++;
    const run = this.lane.then(() => {
      if (signal.aborted) throw new AbortError('request cancelled before scoring');
      return this.model.score(ids, { top, signal });
    });
    this.lane = run.catch(() => undefined);
    return run.finally(() => this.counts.scoring--);
  }

  /** Resolves once nothing is queued, running or scoring. */
  async idle(): Promise<void> {
    while (this.queue.length || this.counts.running || this.counts.scoring) {
      await new Promise((r) => setTimeout(r, 5));
    }
    await this.lane;
    await this.group.idle();
  }

  /** Refuses new work, fails what is queued, waits for what runs, frees the group's cache. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const q of this.queue.splice(0)) q.reject(new ApiError(503, 'The server is shutting down', 'server_error'));
    while (this.counts.running || this.counts.scoring) await new Promise((r) => setTimeout(r, 5));
    await this.lane;
    await this.group.idle();
    this.group.destroy();
  }
}
