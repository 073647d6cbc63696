/**
 * Beam search options and their validation, and the hypothesis record the search returns
 * (the search itself, which drives the model, is src/engine/beam-search.ts).
 */
import { InvalidOptionError } from '../errors.js';
import { checkOptions } from './names.js';
import { validateBans } from './options.js';

export interface BeamOptions {
  /**
   * Beams kept, 1 to 256. Each step costs a decode step of numBeams tokens and the ranking of
   * numBeams x vocab candidates (the top 2 x numBeams of each beam, merged in O(numBeams^2)).
   */
  numBeams: number;
  numReturnSequences?: number;
  maxNewTokens: number;
  /** score = logprob / new_tokens ** lengthPenalty; default 0. */
  lengthPenalty?: number;
  /**
   * false (default, the exercise's rule): stop once numReturnSequences hypotheses ended with EOS;
   * true (HF's early_stopping=True): stop once numBeams have. Both stop at maxNewTokens.
   * (HF's early_stopping=False heuristic is not implemented.)
   */
  earlyStopping?: boolean;
  /** Token that ends a hypothesis; default the model's eos_token_id. */
  eosTokenId?: number;
  /** As in generate (SamplingOptions): bans on each hypothesis' prompt + tokens, applied to the log-probabilities. */
  noRepeatNgramSize?: number;
  badWordsIds?: number[][];
  suppressTokens?: number[];
  /** EOS is banned until a hypothesis has this many new tokens. */
  minNewTokens?: number;
  /** Aborting rejects with AbortError at once, even while a step runs on the GPU. */
  signal?: AbortSignal;
}

export interface BeamHypothesis {
  /** Sum of the log-probabilities of the new tokens. */
  logprob: number;
  /** logprob / newTokens ** lengthPenalty. */
  score: number;
  /** The completion's tokens, EOS last when it ended with EOS (the prompt is BeamResult.promptIds). */
  tokens: number[];
  /** The completion's text (EOS left out), as generate() reports a sequence's. */
  text: string;
  /** It ended with EOS (finishReason 'eos'); false: cut at maxNewTokens ('length'). */
  finished: boolean;
  finishReason: 'eos' | 'length';
}

/** What beam search resolves to: the prompt, and the hypotheses best first. */
export interface BeamResult {
  /** The prompt's ids (never part of a hypothesis' tokens or text). */
  promptIds: number[];
  /** numReturnSequences hypotheses, best first. */
  sequences: BeamHypothesis[];
}

/** Every beam search option's name. */
export const BEAM_OPTIONS: readonly string[] = [
  'numBeams',
  'numReturnSequences',
  'maxNewTokens',
  'lengthPenalty',
  'earlyStopping',
  'eosTokenId',
  'noRepeatNgramSize',
  'badWordsIds',
  'suppressTokens',
  'minNewTokens',
  'signal',
];

export function validateBeam(o: BeamOptions, vocab: number): Required<Omit<BeamOptions, 'signal'>> {
  checkOptions(o, BEAM_OPTIONS, 'beam search option');
  const int = (name: string, v: unknown, lo: number, hi: number): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
      throw new InvalidOptionError(`${name} must be an integer in [${lo}, ${hi}], got ${String(v)}`);
    }
    return v;
  };
  const numBeams = int('numBeams', o.numBeams, 1, 256);
  const numReturn = int('numReturnSequences', o.numReturnSequences ?? 1, 1, 256);
  if (numReturn > numBeams)
    throw new InvalidOptionError(`numReturnSequences (${numReturn}) must be <= numBeams (${numBeams})`);
  const maxNew = int('maxNewTokens', o.maxNewTokens, 0, 100_000);
  const lp = o.lengthPenalty ?? 0;
  if (typeof lp !== 'number' || !Number.isFinite(lp))
    throw new InvalidOptionError(`lengthPenalty must be a finite number, got ${String(lp)}`);
  const es = o.earlyStopping ?? false;
  if (typeof es !== 'boolean') throw new InvalidOptionError(`earlyStopping must be a boolean, got ${String(es)}`);
  const eos = o.eosTokenId ?? vocab - 1;
  int('eosTokenId', eos, 0, vocab - 1);
  return {
    numBeams,
    numReturnSequences: numReturn,
    maxNewTokens: maxNew,
    lengthPenalty: lp,
    earlyStopping: es,
    eosTokenId: eos,
    ...validateBans(o as unknown as Record<string, unknown>, vocab),
  };
}
