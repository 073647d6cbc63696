/**
 * POST /v1/completions: the body to a Job (request.ts), the Job run (runner.ts), the result in
 * OpenAI's text_completion shape, whole or as server-sent chunks.
 */
import type { Model } from '../engine/engine.js';
import { DEFAULT_MAX_TOKENS, jobOf, type Job } from './request.js';
import type { ChoiceResult, LogprobEntry, StreamSink, Usage } from './runner.js';
import type { SseStream } from './sse.js';

export interface Meta {
  id: string;
  created: number;
  model: string;
}

export function completionJob(model: Model, body: Record<string, unknown>, window: number): Job {
  return jobOf(
    model,
    body,
    {
      prompt: body.prompt,
      maxTokens: typeof body.max_tokens === 'number' ? body.max_tokens : undefined,
      defaultMaxTokens: DEFAULT_MAX_TOKENS,
      logprobs: typeof body.logprobs === 'number' ? body.logprobs : null,
      echo: body.echo === true,
    },
    window,
  );
}

/** OpenAI's legacy logprobs object; top_logprobs holds the top N and the token itself. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: Array<number | null>;
  top_logprobs: Array<Record<string, number> | null>;
  text_offset: number[];
}

export function completionLogprobs(entries: LogprobEntry[]): CompletionLogprobs {
  return {
    tokens: entries.map((e) => e.token),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => {
      if (e.top === null || e.logprob === null) return null;
      const d: Record<string, number> = {};
      for (const t of e.top) if (!(t.token in d)) d[t.token] = t.logprob;
      if (!(e.token in d)) d[e.token] = e.logprob;
      return d;
    }),
    text_offset: entries.map((e) => e.offset),
  };
}

function choiceText(job: Job, c: ChoiceResult): string {
  return (job.echo ? job.promptTexts[c.promptIndex]! : '') + c.text;
}

export function completionResponse(meta: Meta, job: Job, choices: ChoiceResult[], usage: Usage) {
  return {
    id: meta.id,
    object: 'text_completion',
    created: meta.created,
    model: meta.model,
    choices: choices.map((c) => ({
      text: choiceText(job, c),
      index: c.index,
      logprobs: c.logprobs ? completionLogprobs(c.logprobs) : null,
      finish_reason: c.finishReason,
    })),
    usage,
  };
}

/**
 * The stream of one completion request: text chunks as they come (the echoed prompt first), with
 * logprobs each chunk's tokens' entries, each choice's last chunk with its finish_reason, then a
 * usage chunk when stream_options.include_usage asked for one.
 */
export function completionStream(meta: Meta, job: Job, sse: SseStream): StreamSink & { end(usage: Usage): void } {
  const echoed = new Set<number>();
  const chunk = (index: number, text: string, extra: { logprobs?: unknown; finish_reason?: string } = {}) =>
    sse.send({
      id: meta.id,
      object: 'text_completion',
      created: meta.created,
      model: meta.model,
      choices: [{ text, index, logprobs: extra.logprobs ?? null, finish_reason: extra.finish_reason ?? null }],
    });
  // With logprobs the runner sends the echoed prompt itself, with its entries.
  const echo = (index: number): void => {
    if (!job.echo || job.logprobs !== null || echoed.has(index)) return;
    echoed.add(index);
    chunk(index, job.promptTexts[Math.floor(index / job.n)]!);
  };
  const lp = (e: LogprobEntry[] | undefined) => (e && job.logprobs !== null ? completionLogprobs(e) : undefined);
  return {
    text(index, text, logprobs) {
      echo(index);
      chunk(index, text, { logprobs: lp(logprobs) });
    },
    done(c, rest, restLogprobs) {
      echo(c.index);
      chunk(c.index, rest, { logprobs: lp(restLogprobs), finish_reason: c.finishReason });
    },
    end(usage) {
      if (job.includeUsage)
        sse.send({
          id: meta.id,
          object: 'text_completion',
          created: meta.created,
          model: meta.model,
          choices: [],
          usage,
        });
      sse.end();
    },
  };
}
