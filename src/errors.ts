/**
 * Named error classes. Every failure the engine reports is one of these, with a message that names
 * the problem, gives the actual values and, where one exists, a hint.
 */

/** Base class of every error this package throws. */
export class GPT2WebGPUError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** No WebGPU adapter or device could be obtained. */
export class WebGPUUnavailableError extends GPT2WebGPUError {}

/** A model file (config.json, safetensors) is malformed or disagrees with its config. */
export class WeightsFormatError extends GPT2WebGPUError {}

/** A tensor or buffer has the wrong shape or size for the operation asked of it. */
export class ShapeError extends GPT2WebGPUError {}

/** The GPU device was lost (driver reset, `device.destroy()`, out of memory in the driver...). */
export class DeviceLostError extends GPT2WebGPUError {}

/** A GPU validation or internal error was raised while running our commands. */
export class GPUValidationError extends GPT2WebGPUError {}

/** The GPU (or the adapter's limits) cannot hold what was asked for. */
export class OutOfMemoryError extends GPT2WebGPUError {}

/** An option (sampling, beam search, cache, CLI flag) is outside its domain. */
export class InvalidOptionError extends GPT2WebGPUError {}

/** A prompt is empty, holds ids outside the vocabulary, or cannot be encoded. */
export class PromptError extends GPT2WebGPUError {}

/** A KV cache (session) was misused: destroyed, owned by another model, or busy with a step. */
export class CacheMisuseError extends GPT2WebGPUError {}

/**
 * A model (or the engine) was destroyed: before the call, or while the call was using it (the call
 * stops at its next step, submits nothing more and delivers no more tokens).
 */
export class DestroyedError extends GPT2WebGPUError {}

/** A model download failed or the downloaded file does not match its expected size/hash. */
export class DownloadError extends GPT2WebGPUError {
  /** The file is not there: the hub answered 404, or offline mode did not find it in the cache. */
  readonly missing: boolean;
  constructor(message: string, options?: { cause?: unknown; missing?: boolean }) {
    super(message, options);
    this.missing = options?.missing ?? false;
  }
}

/**
 * A generation was cancelled through its AbortSignal (or by leaving a stream's loop early). A
 * generation's AbortError carries what it produced before it stopped.
 */
export class AbortError extends GPT2WebGPUError {
  /** The first sequence's new tokens so far (empty when no step was read back). */
  tokens: number[] = [];
  /** Their text so far (what onToken delivered). */
  text = '';
  /**
   * Every sequence's new tokens and text so far (generate with numSequences > 1, generateBatch),
   * and their log-probabilities when the generation computed them (GenerateOptions.logprobs).
   */
  sequences: Array<{
    tokens: number[];
    text: string;
    logprobs?: Array<{
      logprob: number;
      processedLogprob: number;
      greedy: boolean;
      top?: Array<{ id: number; logprob: number }>;
    }>;
  }> = [];
}

/** A sequence would pass the context window and the cache's overflow policy is 'error'. */
export class ContextOverflowError extends GPT2WebGPUError {}
