/**
 * POST /v1/chat/completions. GPT-2 is not a chat model (it was never tuned to follow turns); this
 * endpoint only lets chat clients talk to it through a plain transcript template:
 *
 *   System: <system or developer message>
 *   User: <user message>
 *   Assistant: <assistant message>
 *   ...
 *   Assistant:
 *
 * one line per message (its text as given), and the reply is the continuation of the last line,
 * stopped at "\nUser:" or "\nSystem:" (besides the request's own stop strings), leading
 * whitespace removed. max_completion_tokens (or max_tokens) defaults to the rest of the window.
 */
import type { Model } from '../engine/engine.js';
import { jobOf, type Job } from './request.js';
import type { ChoiceResult, LogprobEntry, StreamSink, Usage } from './runner.js';
import type { SseStream } from './sse.js';
import type { Meta } from './completions.js';

export const CHAT_STOP = ['\nUser:', '\nSystem:'];
const LABEL: Record<string, string> = { system: 'System', developer: 'System', user: 'User', assistant: 'Assistant' };

interface Message {
  role: string;
  content: string | Array<{ type: 'text'; text: string }>;
}

/** The transcript a chat request becomes (see the module comment). */
export function chatPrompt(messages: readonly Message[]): string {
  const lines = messages.map((m) => {
    const text = typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('');
    return `${LABEL[m.role] ?? 'User'}: ${text}\n`;
  });
  return `${lines.join('')}Assistant:`;
}

export function chatJob(model: Model, body: Record<string, unknown>, window: number): Job {
  const max = [body.max_completion_tokens, body.max_tokens].find((v) => typeof v === 'number') as number | undefined;
  return jobOf(
    model,
    body,
    {
      prompt: chatPrompt(body.messages as Message[]),
      maxTokens: max,
      defaultMaxTokens: 'rest',
      extraStop: CHAT_STOP,
      logprobs: body.logprobs === true ? (typeof body.top_logprobs === 'number' ? body.top_logprobs : 0) : null,
      echo: false,
    },
    window,
  );
}

const bytes = (s: string): number[] => [...new TextEncoder().encode(s)];

/** Chat's logprobs object: one entry per generated token with its top alternatives. */
function chatLogprobs(entries: LogprobEntry[]) {
  return {
    content: entries.map((e) => ({
      token: e.token,
      logprob: e.logprob,
      bytes: bytes(e.token),
      top_logprobs: (e.top ?? []).map((t) => ({ token: t.token, logprob: t.logprob, bytes: bytes(t.token) })),
    })),
  };
}

export function chatResponse(meta: Meta, choices: ChoiceResult[], usage: Usage) {
  return {
    id: meta.id,
    object: 'chat.completion',
    created: meta.created,
    model: meta.model,
    choices: choices.map((c) => ({
      index: c.index,
      message: { role: 'assistant', content: c.text.trimStart() },
      logprobs: c.logprobs ? chatLogprobs(c.logprobs) : null,
      finish_reason: c.finishReason,
    })),
    usage,
  };
}

/** chat.completion.chunk events: the role first, content deltas (leading whitespace dropped), the finish. */
export function chatStream(meta: Meta, job: Job, sse: SseStream): StreamSink & { end(usage: Usage): void } {
  const begun = new Set<number>();
  const content = new Set<number>();
  const chunk = (index: number, delta: Record<string, string>, extra: { logprobs?: unknown; finish?: string } = {}) =>
    sse.send({
      id: meta.id,
      object: 'chat.completion.chunk',
      created: meta.created,
      model: meta.model,
      choices: [{ index, delta, logprobs: extra.logprobs ?? null, finish_reason: extra.finish ?? null }],
    });
  // Leading whitespace is dropped from the content, not from the tokens' logprobs: a piece that was
  // all whitespace still sends its tokens' entries (with an empty delta).
  const text = (index: number, t: string, logprobs?: LogprobEntry[]): void => {
    if (!begun.has(index)) {
      begun.add(index);
      chunk(index, { role: 'assistant', content: '' });
    }
    const piece = content.has(index) ? t : t.trimStart();
    const lp = logprobs?.length ? { logprobs: chatLogprobs(logprobs) } : {};
    if (piece) content.add(index);
    if (piece || lp.logprobs) chunk(index, piece ? { content: piece } : {}, lp);
  };
  return {
    text,
    done(c, rest, restLogprobs) {
      text(c.index, rest, restLogprobs);
      chunk(c.index, {}, { finish: c.finishReason });
    },
    end(usage) {
      if (job.includeUsage)
        sse.send({
          id: meta.id,
          object: 'chat.completion.chunk',
          created: meta.created,
          model: meta.model,
          choices: [],
          usage,
        });
      sse.end();
    },
  };
}
