/**
 * Option names: the messages for an option this package does not know. The API is camelCase; users
 * of transformers (generate's snake_case kwargs), OpenAI and vLLM bring their own names, which are
 * refused (one name per option) with the name to use instead, or the closest valid one by edit
 * distance, and the full list of valid options.
 */
import { InvalidOptionError } from '../errors.js';

/**
 * Other libraries' names (transformers, OpenAI, vLLM) -> this package's option, with a note where
 * they differ; `elsewhere`: what to say where that option is not valid (it belongs to another call).
 */
const FOREIGN: Record<string, { to: string; note?: string; elsewhere?: string }> = {
  max_new_tokens: { to: 'maxNewTokens' },
  max_tokens: { to: 'maxNewTokens' },
  maxTokens: { to: 'maxNewTokens' },
  max_completion_tokens: { to: 'maxNewTokens' },
  max_length: { to: 'maxNewTokens', note: 'it counts new tokens only; max_length counts the prompt too' },
  maxLength: { to: 'maxNewTokens', note: 'it counts new tokens only; max_length counts the prompt too' },
  min_new_tokens: { to: 'minNewTokens' },
  min_tokens: { to: 'minNewTokens' },
  num_return_sequences: { to: 'numSequences' },
  numReturnSequences: { to: 'numSequences' },
  n: { to: 'numSequences' },
  do_sample: {
    to: 'temperature',
    note: 'there is no do_sample: sampling is the default, and temperature: 0 is greedy decoding',
  },
  doSample: {
    to: 'temperature',
    note: 'there is no doSample: sampling is the default, and temperature: 0 is greedy decoding',
  },
  frequency_penalty: { to: 'freqPenalty' },
  frequencyPenalty: { to: 'freqPenalty' },
  stop: { to: 'stopStrings' },
  stop_sequences: { to: 'stopStrings' },
  stopSequences: { to: 'stopStrings' },
  include_stop_str_in_output: { to: 'includeStopString' },
  ignore_eos: { to: 'stopAtEos', note: 'ignore_eos: true is stopAtEos: false' },
  ignoreEos: { to: 'stopAtEos', note: 'ignoreEos: true is stopAtEos: false' },
  eos_token_id: { to: 'eosTokenId' },
  random_seed: { to: 'seed' },
  top_logprobs: {
    to: 'logprobs',
    note: 'logprobs: N gives each token its log-prob and the N most likely alternatives',
  },
  topLogprobs: { to: 'logprobs', note: 'logprobs: N gives each token its log-prob and the N most likely alternatives' },
  output_scores: {
    to: 'logprobs',
    note: "logprobs: 0 gives each token's log-prob under the processed distribution (processedLogprob) and the raw one",
  },
  num_beams: { to: 'numBeams', elsewhere: 'beam search is model.beamSearch(prompt, { numBeams, ... })' },
  length_penalty: { to: 'lengthPenalty', elsewhere: 'it is a beam search option (model.beamSearch)' },
  early_stopping: { to: 'earlyStopping', elsewhere: 'it is a beam search option (model.beamSearch)' },
  stream: { to: 'stream', elsewhere: 'for a stream call model.stream(prompt, options)' },
};

/** snake_case -> camelCase (top_k -> topK). */
function camel(name: string): string {
  return name.replace(/_+([a-z0-9])/gi, (_, c: string) => c.toUpperCase());
}

/** Levenshtein distance, case-insensitive. */
function distance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const row = [i];
    for (let j = 1; j <= y.length; j++) {
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[y.length]!;
}

/**
 * The valid option closest to `name`: another library's name for it, its camelCase form, the same
 * letters in other case or without underscores, else the nearest by edit distance (at most a
 * third of the name's length, and at least 2). undefined: nothing close.
 */
export function suggestOption(name: string, valid: readonly string[]): { to?: string; note?: string } | undefined {
  const foreign = Object.hasOwn(FOREIGN, name) ? FOREIGN[name] : undefined;
  if (foreign && valid.includes(foreign.to)) return { to: foreign.to, note: foreign.note };
  if (foreign?.elsewhere) return { note: foreign.elsewhere }; // e.g. num_beams in generate()
  const flat = (s: string) => s.replace(/_/g, '').toLowerCase();
  const same = valid.find((v) => v === camel(name) || flat(v) === flat(name));
  if (same) return { to: same };
  let best: string | undefined;
  let bestD = Infinity;
  for (const v of valid) {
    const d = distance(name, v);
    if (d < bestD) [best, bestD] = [v, d];
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(name.length / 3)) ? { to: best } : undefined;
}

/**
 * Throws InvalidOptionError for the first key of `opts` (with a defined value) that is not in
 * `valid`: the message names it, suggests the closest valid option and lists every valid one.
 * `what` names the options in the message ("generation option", "beam search option");
 * `internal` names are accepted without being offered.
 */
export function checkOptionNames(
  opts: object,
  valid: readonly string[],
  what: string,
  internal: readonly string[] = [],
): void {
  for (const [k, v] of Object.entries(opts)) {
    if (v === undefined || valid.includes(k) || internal.includes(k)) continue;
    const s = suggestOption(k, valid);
    const hint = !s ? '' : s.to ? ` Did you mean ${s.to}?${s.note ? ` (${s.note})` : ''}` : ` Note: ${s.note}.`;
    throw new InvalidOptionError(`unknown ${what} "${k}".${hint} Valid options: ${valid.join(', ')}.`);
  }
}

/**
 * An options interface's names, from a record the compiler checks against it: every name of `T`
 * and no other (a name added to the interface and not here fails to compile).
 */
export function optionNames<T>(names: Record<keyof T, true>): readonly string[] {
  return Object.keys(names);
}

/** How a value that is not an options object reads in a message. */
function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'function') return 'a function';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  return `${typeof v} ${String(v)}`;
}

/**
 * The options object a call was given, checked before anything reads it: left out (undefined) is
 * {}; null, an array or any other value is an InvalidOptionError, and so is a name not in `valid`
 * (checkOptionNames). `what` names one option ("cache option").
 */
export function checkOptions<T extends object>(
  opts: T | undefined,
  valid: readonly string[],
  what: string,
  internal: readonly string[] = [],
): T {
  if (opts === undefined) return {} as T;
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts))
    throw new InvalidOptionError(`${what}s must be an object (or left out), got ${describe(opts)}`);
  checkOptionNames(opts, valid, what, internal);
  return opts;
}
