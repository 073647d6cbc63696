/**
 * GPT-2's byte-level BPE (r50k_base) through gpt-tokenizer, plus streaming-safe decoding: a token
 * can end in the middle of a UTF-8 sequence, so text is emitted only up to the last complete
 * character.
 */
import { decode, encode } from 'gpt-tokenizer/encoding/r50k_base';
import { PromptError } from '../errors.js';

export const EOS_TOKEN_ID = 50256;

export interface Tokenizer {
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
  readonly vocabSize: number;
  readonly eosTokenId: number;
}

/** GPT-2's tokenizer. Rejects strings that are not valid Unicode (lone surrogates). */
export const gpt2Tokenizer: Tokenizer = {
  vocabSize: 50257,
  eosTokenId: EOS_TOKEN_ID,
  encode(text: string): number[] {
    if (typeof text !== 'string') throw new PromptError(`prompt must be a string, got ${typeof text}`);
    const bad = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.exec(text);
    if (bad) {
      throw new PromptError(`prompt is not valid Unicode: lone surrogate U+${bad[0].charCodeAt(0).toString(16).toUpperCase()} at index ${bad.index}`);
    }
    // "<|endoftext|>" in the text is GPT-2's special token (as HF's tokenizer treats it); the
    // BPE never produces id 50256 by itself, so split on it and join the pieces with the id.
    const out: number[] = [];
    text.split('<|endoftext|>').forEach((part, i) => {
      if (i > 0) out.push(EOS_TOKEN_ID);
      if (part) for (const id of encode(part)) out.push(id);
    });
    return out;
  },
  decode(ids: readonly number[]): string {
    return decode(ids as number[]);
  },
};

/**
 * Incremental decoder: push token ids, get the new complete text. Holds back a trailing
 * replacement character (an incomplete UTF-8 sequence) until the next token completes it.
 */
export class TextStreamer {
  private ids: number[] = [];
  private emitted = 0;
  constructor(private readonly tok: Tokenizer) {}
  push(id: number): string {
    this.ids.push(id);
    const text = this.tok.decode(this.ids);
    let end = text.length;
    while (end > this.emitted && text.charCodeAt(end - 1) === 0xfffd) end--;
    const piece = text.slice(this.emitted, end);
    this.emitted = end;
    return piece;
  }
  /** Whatever is left (including replacement characters of a truly broken tail). */
  flush(): string {
    const text = this.tok.decode(this.ids);
    const piece = text.slice(this.emitted);
    this.emitted = text.length;
    return piece;
  }
  get text(): string {
    return this.tok.decode(this.ids);
  }
}
