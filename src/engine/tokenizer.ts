/**
 * GPT-2's byte-level BPE (r50k_base) through gpt-tokenizer, plus streaming-safe decoding: a token
 * can end in the middle of a UTF-8 sequence, so text is emitted only up to the last complete
 * character.
 */
import r50k, { decode, encode } from 'gpt-tokenizer/encoding/r50k_base';
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
      throw new PromptError(
        `prompt is not valid Unicode: lone surrogate U+${bad[0].charCodeAt(0).toString(16).toUpperCase()} at index ${bad.index}`,
      );
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
    if (!Array.isArray(ids) && !ArrayBuffer.isView(ids))
      throw new PromptError(`decode takes an array of token ids, got ${ids === null ? 'null' : typeof ids}`);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id > EOS_TOKEN_ID)
        throw new PromptError(`decode: token ${i} is ${String(id)}; ids are integers in [0, ${EOS_TOKEN_ID}]`);
    }
    return decode(Array.isArray(ids) ? (ids as number[]) : Array.from(ids));
  },
};

/** Bytes of one token, through gpt-tokenizer's BPE table (undefined if it is not a plain token). */
type TokenBytes = (id: number) => Uint8Array | string | undefined;
const tokenBytes: TokenBytes | undefined = (() => {
  const core = (r50k as unknown as { bytePairEncodingCoreProcessor?: { tryDecodeToken?: TokenBytes } })
    .bytePairEncodingCoreProcessor;
  return core?.tryDecodeToken ? (id: number) => core.tryDecodeToken!.call(core, id) : undefined;
})();

/**
 * Incremental decoder: push token ids, get the new complete text. A token can end in the middle
 * of a UTF-8 sequence; a streaming TextDecoder holds such bytes until the next token completes
 * them. O(1) per token (decoding the whole sequence each time would be quadratic).
 */
export class TextStreamer {
  private readonly ids: number[] = [];
  private readonly utf8 = new TextDecoder('utf-8', { fatal: false });
  private readonly enc = new TextEncoder();
  private emitted = '';
  constructor(private readonly tok: Tokenizer) {}
  push(id: number): string {
    this.ids.push(id);
    const b = this.tok === gpt2Tokenizer && tokenBytes && id !== EOS_TOKEN_ID ? tokenBytes(id) : undefined;
    let piece: string;
    if (b === undefined) {
      // Special tokens or another tokenizer: decode the whole sequence (rare path).
      const text = this.tok.decode(this.ids);
      piece = text.slice(this.emitted.length);
    } else {
      piece = this.utf8.decode(typeof b === 'string' ? this.enc.encode(b) : b, { stream: true });
    }
    this.emitted += piece;
    return piece;
  }
  /** Whatever is left (replacement characters for a truly broken tail). */
  flush(): string {
    const piece = this.utf8.decode();
    this.emitted += piece;
    return piece;
  }
  get text(): string {
    return this.emitted;
  }
}
