/**
 * A caller's listeners (GenerateOptions.onToken, onSequenceDone) may be async functions. Their
 * promises are watched, so that a rejection is never unhandled (Node ends the process on one): it
 * fails the call as a throw from the listener would, thrown from that listener's next call, and
 * in any case by the call's end: a call that succeeded waits for every promise its listeners
 * returned (one still pending keeps it open until it settles, or until the call's signal fires).
 */
import { AbortError } from '../errors.js';

type Listener<E> = (ev: E) => unknown;

export class ListenerGuard {
  private readonly pending = new Set<Promise<void>>();
  private failed: { error: unknown } | undefined;
  constructor(private readonly signal?: AbortSignal) {}

  /** `fn` as a synchronous listener that watches what it returns; anything but a function as is. */
  wrap<E, F>(fn: F): F {
    if (typeof fn !== 'function') return fn; // left for the options' own check to name
    const call = fn as Listener<E>;
    const wrapped = (ev: E): void => {
      this.throwIfFailed();
      const r = call(ev);
      if (r !== null && typeof r === 'object' && typeof (r as PromiseLike<unknown>).then === 'function')
        this.watch(r as PromiseLike<unknown>);
    };
    return wrapped as F;
  }

  /** `opts` with its onToken and onSequenceDone wrapped (the other options as they are). */
  options<O extends { onToken?: unknown; onSequenceDone?: unknown }>(opts: O): O {
    if (opts.onToken === undefined && opts.onSequenceDone === undefined) return opts;
    return { ...opts, onToken: this.wrap(opts.onToken), onSequenceDone: this.wrap(opts.onSequenceDone) };
  }

  /**
   * The call's result once its listeners' promises have settled, or the first listener rejection.
   * A call that failed fails at once with its own error (its listeners' rejections are caught).
   */
  async settle<R>(call: Promise<R>): Promise<R> {
    const value = await call;
    if (!(await this.drain())) {
      const e = new AbortError('generation aborted while its listeners were still running');
      const sequences = (value as { sequences?: AbortError['sequences'] }).sequences;
      if (Array.isArray(sequences)) {
        e.sequences = sequences;
        e.tokens = sequences[0]?.tokens ?? [];
        e.text = sequences[0]?.text ?? '';
      }
      throw e;
    }
    this.throwIfFailed();
    return value;
  }

  private watch(p: PromiseLike<unknown>): void {
    const w = Promise.resolve(p).then(
      () => undefined,
      (error: unknown) => {
        this.failed ??= { error };
      },
    );
    this.pending.add(w);
    void w.then(() => this.pending.delete(w));
  }

  private throwIfFailed(): void {
    if (this.failed) throw this.failed.error;
  }

  /** Waits for the pending listener promises (those they start meanwhile too): false if the signal fired first. */
  private async drain(): Promise<boolean> {
    const signal = this.signal;
    while (this.pending.size) {
      if (signal?.aborted) return false;
      let onAbort = (): void => {};
      const aborted = new Promise<void>((resolve) => {
        onAbort = resolve;
        signal?.addEventListener('abort', onAbort, { once: true });
      });
      await Promise.race([Promise.all([...this.pending]), aborted]);
      signal?.removeEventListener('abort', onAbort);
    }
    return true;
  }
}
