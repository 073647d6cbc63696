/**
 * The server's queue in front of one session group (continuous batching).
 *
 * Every choice of every request is a unit: one prompt, one sequence, its own options. Units wait
 * in a bounded FIFO; a unit starts on a free session of the group (its history reset: completions
 * are stateless). Units started in the same tick are merged by the group into one batched run,
 * and a unit started while such a run goes on takes the place of a finished one at its next step
 * (SessionGroup's continuous batching). When the group is idle the queue waits `batchWaitMs`
 * after the first arrival (or until every free session has a unit) so that requests arriving
 * together start together.
 *
 * Cancelling (the client went away): a unit still queued is dropped. A running unit that started
 * alone (no run of the group to merge with) got the request's AbortSignal and stops at the next
 * step; a unit merged into a run has no signal (the group runs a turn with a signal on its own,
 * outside the batch), so it runs to its end (max_tokens at most) and its result is discarded.
 *
 * Scoring (logprobs) runs through a second lane, one call at a time: each call makes a temporary
 * cache and [256, vocab] logits, so calls in parallel would only multiply the memory.
 */
import type { GenerateOptions, GenerateResult, TokenEvent } from '../engine/generate.js';
import type { Model, Session, SessionGroup } from '../engine/engine.js';
import type { ScoreResult } from '../engine/score.js';
import { AbortError } from '../errors.js';
import { ApiError } from './errors.js';

/** A unit's generation options (the session's cache and rows are the scheduler's). */
export type UnitOptions = Omit<GenerateOptions, 'cache' | 'cacheRows' | 'signal' | 'numSequences' | 'onToken'>;

export interface Unit {
  ids: number[];
  opts: UnitOptions;
  onToken?: (ev: TokenEvent) => void;
}

interface Queued extends Unit {
  signal: AbortSignal;
  resolve: (r: GenerateResult) => void;
  reject: (e: unknown) => void;
}

export interface SchedulerOptions {
  /** Sessions of the group: sequences advanced in one batched step (default 16). */
  maxBatch?: number;
  /** Units (and scoring calls) waiting at most; past it submit() throws a 429 (default 256). */
  maxQueue?: number;
  /** How long an idle group waits for more arrivals before starting (default 5 ms). */
  batchWaitMs?: number;
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
  /** Positions a unit may use: its prompt plus its new tokens. */
  readonly window: number;
  private readonly free: Session[];
  private readonly queue: Queued[] = [];
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Running units that may share a merged run (a unit started now may join it). */
  private merged = 0;
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
    this.window = group.cache.window;
    this.free = [...group.sessions].reverse(); // pop() hands out session 0 first
  }

  static async create(model: Model, opts: SchedulerOptions = {}): Promise<Scheduler> {
    const o = { maxBatch: 16, maxQueue: 256, batchWaitMs: 5, ...opts };
    for (const [k, v, lo] of [
      ['maxBatch', o.maxBatch, 1],
      ['maxQueue', o.maxQueue, 1],
      ['batchWaitMs', o.batchWaitMs, 0],
    ] as const) {
      if (!Number.isInteger(v) || v < lo) throw new RangeError(`${k} must be an integer >= ${lo}, got ${String(v)}`);
    }
    const group = await model.createSessionGroup(
      o.maxBatch,
      o.context === undefined ? {} : { capacity: Math.min(o.context, model.config.n_positions) },
    );
    return new Scheduler(model, group, { maxBatch: o.maxBatch, maxQueue: o.maxQueue, batchWaitMs: o.batchWaitMs });
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
          this.queue.push({ ...u, signal, resolve, reject });
        }),
    );
    signal.addEventListener('abort', () => this.dropAborted(), { once: true });
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

  /** Starts units now when every free session has one, else after batchWaitMs. */
  private schedule(): void {
    if (this.closed || this.queue.length === 0 || this.free.length === 0) return;
    if (this.queue.length >= this.free.length || this.batchWaitMs === 0) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.startUnits();
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.startUnits();
      }, this.batchWaitMs);
    }
  }

  /**
   * Starts as many queued units as there are free sessions, in one tick, so that the group merges
   * them. A unit that can share no run (alone in its cohort with its stopAtEos, and no merged run
   * going on) gets its request's signal: the group runs it on its own anyway.
   */
  private startUnits(): void {
    const cohort = this.queue.splice(0, Math.min(this.free.length, this.queue.length));
    const keyOf = (q: Queued): boolean => q.opts.stopAtEos ?? true;
    const sizes = new Map<boolean, number>();
    for (const q of cohort) sizes.set(keyOf(q), (sizes.get(keyOf(q)) ?? 0) + 1);
    const mergedBefore = this.merged;
    for (const q of cohort) {
      const shares = sizes.get(keyOf(q))! > 1 || mergedBefore > 0;
      this.startOne(q, shares);
    }
  }

  private startOne(q: Queued, shares: boolean): void {
    const session = this.free.pop()!;
    this.counts.running++;
    this.counts.started++;
    if (shares) {
      this.merged++;
      this.counts.shared++;
    }
    let p: Promise<GenerateResult>;
    try {
      session.reset();
      p = session.generate(q.ids, {
        ...q.opts,
        ...(q.onToken ? { onToken: q.onToken } : {}),
        ...(shares ? {} : { signal: q.signal }),
      });
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (r) => {
        this.counts.completed++;
        if (q.signal.aborted) q.reject(new AbortError('request cancelled'));
        else q.resolve(r);
      },
      (e) => {
        this.counts.failed++;
        q.reject(e);
      },
    ).finally(() => {
      this.counts.running--;
      if (shares) this.merged--;
      this.free.push(session);
      this.schedule();
    });
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
