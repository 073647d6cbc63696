/**
 * Request bodies (already checked against schema.ts) to a Job: token ids per prompt and the
 * engine's options. OpenAI's names map to GenerateOptions: max_tokens -> maxNewTokens (default
 * 16), temperature (default 1), top_p -> topP, seed, presence_penalty -> presencePenalty,
 * frequency_penalty -> freqPenalty, logit_bias -> logitBias (keys are token ids), stop ->
 * stopStrings, n -> n units with seeds deriveSeed(seed, j); the extensions top_k -> topK (-1 or 0
 * off), min_p -> minP, repetition_penalty -> repetitionPenalty, ignore_eos -> stopAtEos false.
 */
import { deriveSeed, validateSampling, type SamplingOptions } from '../sampling/options.js';
import type { Model } from '../engine/engine.js';
import { InvalidOptionError } from '../errors.js';
import { invalid } from './errors.js';

/** OpenAI's default max_tokens for /v1/completions. */
export const DEFAULT_MAX_TOKENS = 16;

export interface Job {
  /** Token ids of each prompt (an empty prompt is "<|endoftext|>", as OpenAI's). */
  prompts: number[][];
  /** Each prompt's text, for echo. */
  promptTexts: string[];
  /** Choices per prompt. */
  n: number;
  maxTokens: number;
  /** Sampling options without the seed (see seedOf). */
  sampling: Omit<SamplingOptions, 'seed'>;
  seed: number | undefined;
  stop: string[];
  stopAtEos: boolean;
  /** Alternatives per token for logprobs (0-5), or null for none. */
  logprobs: number | null;
  echo: boolean;
  stream: boolean;
  includeUsage: boolean;
}

/** The seed of choice j: deriveSeed(seed, j), so choice j equals sequence j of model.generate(..., { numSequences: n, seed }). */
export function seedOf(job: Job, j: number): number | undefined {
  return job.seed === undefined ? undefined : deriveSeed(job.seed, j);
}

type Body = Record<string, unknown>;

/**
 * Fields the server does not implement, refused by name when their value would change the result
 * (ignoring them would answer something else than what was asked); harmless values pass.
 */
const REFUSED: Array<[string, (v: unknown) => boolean, string]> = [
  [
    'best_of',
    (v) => v == null || v === 1,
    'best_of > 1 (ranking several completions on the server) is not supported; ask for n choices with logprobs and rank them',
  ],
  ['suffix', (v) => v == null || v === '', 'suffix (insertion) is not supported: GPT-2 only continues text'],
  ['use_beam_search', (v) => !v, 'use_beam_search is not supported here; the library and CLI have beam search'],
  ['min_tokens', (v) => !v, 'min_tokens is not supported'],
  [
    'stop_token_ids',
    (v) => v == null || (Array.isArray(v) && v.length === 0),
    'stop_token_ids is not supported; use stop strings',
  ],
  ['include_stop_str_in_output', (v) => !v, 'include_stop_str_in_output is not supported'],
  ['typical_p', (v) => v == null || v === 1, 'typical_p is not supported'],
  ['mirostat', (v) => !v, 'mirostat is not supported'],
  ['length_penalty', (v) => v == null || v === 1, 'length_penalty (beam search) is not supported'],
  ['grammar', (v) => !v, 'grammar-constrained sampling is not supported'],
  ['json_schema', (v) => v == null, 'json_schema-constrained sampling is not supported'],
  ['guided_json', (v) => v == null, 'guided decoding is not supported'],
  ['guided_regex', (v) => v == null, 'guided decoding is not supported'],
  ['guided_choice', (v) => v == null, 'guided decoding is not supported'],
  ['guided_grammar', (v) => v == null, 'guided decoding is not supported'],
  [
    'response_format',
    (v) => v == null || (typeof v === 'object' && (v as { type?: unknown }).type === 'text'),
    'response_format other than text is not supported',
  ],
  [
    'tools',
    (v) => v == null || (Array.isArray(v) && v.length === 0),
    'tools are not supported: GPT-2 is not a chat model',
  ],
  ['tool_choice', (v) => v == null || v === 'none', 'tool_choice is not supported'],
  ['functions', (v) => v == null || (Array.isArray(v) && v.length === 0), 'functions are not supported'],
  ['function_call', (v) => v == null || v === 'none', 'function_call is not supported'],
];

function refuseUnsupported(body: Body): void {
  for (const [field, harmless, why] of REFUSED) {
    if (field in body && !harmless(body[field])) throw invalid(field, `Unsupported parameter '${field}': ${why}`);
  }
}

/** The prompt field as token ids per prompt, and their texts. */
function promptsOf(model: Model, prompt: unknown): { ids: number[][]; texts: string[] } {
  const tok = model.tokenizer;
  const eos = model.config.eos_token_id;
  const list: Array<string | number[]> =
    prompt === undefined
      ? ['']
      : typeof prompt === 'string'
        ? [prompt]
        : (prompt as unknown[]).every((x) => typeof x === 'number')
          ? [prompt as number[]]
          : (prompt as Array<string | number[]>);
  const ids: number[][] = [];
  const texts: string[] = [];
  list.forEach((p, i) => {
    let t: number[];
    try {
      t = typeof p === 'string' ? tok.encode(p) : p;
    } catch (e) {
      throw invalid('prompt', `prompt ${i}: ${(e as Error).message}`);
    }
    const bad = t.find((x) => x >= model.config.vocab_size);
    if (bad !== undefined)
      throw invalid('prompt', `prompt ${i} holds token id ${bad}; ids must be in [0, ${model.config.vocab_size - 1}]`);
    ids.push(t.length ? t : [eos]);
    texts.push(typeof p === 'string' ? p : tok.decode(p));
  });
  return { ids, texts };
}

const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : undefined);

/** The sampling part of a body, checked by the engine's own validation (its message names the option). */
function samplingOf(model: Model, b: Body): Omit<SamplingOptions, 'seed'> {
  const s: Omit<SamplingOptions, 'seed'> = { temperature: num(b.temperature) ?? 1 };
  if (num(b.top_p) !== undefined) s.topP = num(b.top_p);
  if (num(b.top_k) !== undefined && num(b.top_k)! > 0) s.topK = num(b.top_k);
  if (num(b.min_p) !== undefined) s.minP = num(b.min_p);
  if (num(b.repetition_penalty) !== undefined) s.repetitionPenalty = num(b.repetition_penalty);
  if (num(b.presence_penalty) !== undefined) s.presencePenalty = num(b.presence_penalty);
  if (num(b.frequency_penalty) !== undefined) s.freqPenalty = num(b.frequency_penalty);
  if (b.logit_bias && typeof b.logit_bias === 'object') {
    const V = model.config.vocab_size;
    const bias: Record<number, number> = {};
    for (const [k, v] of Object.entries(b.logit_bias as Record<string, number>)) {
      if (Number(k) >= V)
        throw invalid('logit_bias', `logit_bias key ${k} is not a token id: ids are in [0, ${V - 1}]`);
      bias[Number(k)] = v;
    }
    if (Object.keys(bias).length) s.logitBias = bias;
  }
  try {
    validateSampling(s, model.config.vocab_size);
  } catch (e) {
    if (e instanceof InvalidOptionError) throw invalid(null, e.message);
    throw e;
  }
  return s;
}

/** The context check: prompt plus new tokens inside the window (OpenAI's error and code). */
function checkContext(prompts: number[][], maxTokens: number, window: number): void {
  for (const p of prompts) {
    if (p.length + maxTokens > window)
      throw invalid(
        'max_tokens',
        `This model's maximum context length is ${window} tokens, however you requested ${p.length + maxTokens} tokens (${p.length} in your prompt; ${maxTokens} for the completion). Please reduce your prompt; or completion length.`,
        'context_length_exceeded',
      );
  }
}

export interface JobInput {
  prompt: unknown;
  /** The max_tokens given, or undefined for the endpoint's default. */
  maxTokens: number | undefined;
  /** Default when maxTokens is undefined: a number, or 'rest' (the window left after the prompt). */
  defaultMaxTokens: number | 'rest';
  extraStop?: string[];
  logprobs: number | null;
  echo: boolean;
}

/** Builds a Job from a body that passed its schema, for a group whose window is `window`. */
export function jobOf(model: Model, body: Body, input: JobInput, window: number): Job {
  refuseUnsupported(body);
  const { ids, texts } = promptsOf(model, input.prompt);
  const longest = Math.max(...ids.map((p) => p.length));
  const maxTokens =
    input.maxTokens ?? (input.defaultMaxTokens === 'rest' ? Math.max(0, window - longest) : input.defaultMaxTokens);
  checkContext(ids, maxTokens, window);
  const stop = stopsOf(body.stop);
  const so = body.stream_options as { include_usage?: boolean } | null | undefined;
  return {
    prompts: ids,
    promptTexts: texts,
    n: num(body.n) ?? 1,
    maxTokens,
    sampling: samplingOf(model, body),
    seed: num(body.seed),
    stop: [...stop, ...(input.extraStop ?? [])],
    stopAtEos: body.ignore_eos !== true,
    logprobs: input.logprobs,
    echo: input.echo,
    stream: body.stream === true,
    includeUsage: body.stream === true && so?.include_usage === true,
  };
}

function stopsOf(stop: unknown): string[] {
  if (typeof stop === 'string') return [stop];
  if (Array.isArray(stop)) return stop as string[];
  return [];
}
