/**
 * Streaming a generation: model.stream() and session.stream() return the tokens as an async
 * iterable that also carries the generation's result (finish reasons, statistics), so a
 * `for await` loop needs no hand-written next() to reach them.
 */
import { GENERATE_OPTIONS, type GenerateOptions, type GenerateResult, type TokenEvent } from './generate-options.js';
import { checkOptions } from '../sampling/names.js';

/**
 * The tokens of a generation as they are read back, and its result.
 *
 *   const stream = model.stream('Hello', { maxNewTokens: 20 });
 *   for await (const t of stream) process.stdout.write(t.text);
 *   const { sequences, stats } = await stream.result;
 *
 * The generation starts at once (iterating or not). Leaving the loop early (break, return, throw)
 * cancels it and frees its buffers; `result` then rejects with AbortError, which carries the tokens
 * produced so far. The generator's own return value (next() after the last token) is the result too.
 */
export interface GenerationStream extends AsyncGenerator<TokenEvent, GenerateResult, undefined> {
  /**
   * Settles once the generation has ended and freed its buffers: its result, or its error
   * (AbortError with `tokens` / `text` / `sequences` so far when cancelled).
   */
  readonly result: Promise<GenerateResult>;
}

/** Runs `start` with an onToken that feeds the stream and a signal that follows `opts.signal`. */
export function streamGeneration(
  start: (opts: GenerateOptions) => Promise<GenerateResult>,
  opts: Omit<GenerateOptions, 'onToken'>,
): GenerationStream {
  const queue: TokenEvent[] = [];
  let wake: (() => void) | null = null;
  let done = false;
  // Our own controller, following the caller's signal, so that leaving the loop early can cancel.
  const ac = new AbortController();
  checkOptions(opts, GENERATE_OPTIONS, 'generation option');
  const outer = opts.signal;
  const follow = () => ac.abort(outer?.reason);
  if (outer?.aborted) ac.abort(outer.reason);
  else outer?.addEventListener('abort', follow, { once: true });
  const result = Promise.resolve().then(() =>
    start({
      ...opts,
      signal: ac.signal,
      onToken: (ev) => {
        queue.push(ev);
        wake?.();
      },
    }),
  );
  const ended = result.then(
    () => undefined,
    () => undefined,
  );
  void ended.then(() => {
    done = true;
    outer?.removeEventListener('abort', follow);
    wake?.();
  });
  // A caller that only iterates gets the error from the loop; `result` must not also be reported
  // as an unhandled rejection.
  result.catch(() => undefined);

  async function* tokens(): AsyncGenerator<TokenEvent, GenerateResult, undefined> {
    let drained = false;
    try {
      for (;;) {
        while (queue.length) yield queue.shift()!;
        if (done) break;
        await new Promise<void>((res) => (wake = res));
        wake = null;
      }
      drained = true;
      return await result;
    } finally {
      if (!drained && !done) {
        ac.abort();
        await ended; // the generation has freed its buffers
      }
    }
  }
  return Object.assign(tokens(), { result });
}
