// The WebGPU types (GPUDevice, GPUBuffer...) the declarations use: kept in the emitted .d.ts
// (preserve), so a TypeScript consumer gets them from the @webgpu/types dependency unasked.
/// <reference types="@webgpu/types" preserve="true" />
/**
 * gpt2-webgpu: GPT-2 on raw WebGPU. Browser-safe entry point (no Node built-ins imported from
 * here); Node users import the package normally and also get `createEngine` / `nodeGPU`.
 */
export * from './errors.js';
export { createContext, contextFromDevice, GpuContext } from './gpu/device.js';
export type { AdapterSummary, ContextOptions, GpuFeatures, WaitYield } from './gpu/device.js';
export { Engine, Model, Session, SessionGroup } from './engine/engine.js';
export type { SessionTurn } from './engine/engine.js';
export type {
  DownloadOptions,
  EngineOptions,
  LoadProgress,
  ModelLoadOptions,
  ModelSource,
  SourceResolver,
} from './engine/engine-options.js';
export type {
  GenerateOptions,
  GenerateResult,
  GeneratedSequence,
  GenerateStats,
  TokenEvent,
  SequenceDoneEvent,
  FinishReason,
} from './engine/generate.js';
export type { GenerationStream } from './engine/stream.js';
export type { BeamOptions, BeamHypothesis, BeamResult } from './sampling/beam.js';
export type { PerplexityResult, ScoreOptions, ScoreResult, TokenScore } from './engine/score.js';
export type { SamplingOptions } from './sampling/options.js';
export { deriveSeed, validateSampling } from './sampling/options.js';
export { sample } from './sampling/sample.js';
export type { CacheOptions, KvDtype, OverflowPolicy } from './engine/kvcache.js';
export { KVCache, KV_DTYPES } from './engine/kvcache.js';
export { gpt2Tokenizer, TextStreamer, EOS_TOKEN_ID } from './engine/tokenizer.js';
export type { Tokenizer } from './engine/tokenizer.js';
export type { GPT2Config } from './engine/config.js';
export { KNOWN_MODELS } from './engine/config.js';
export { parseConfig, parameterShapes, parameterCount } from './engine/config.js';
export { parseSafetensors, bytesSource } from './engine/safetensors.js';
export type { ByteSource, SafetensorsFile } from './engine/safetensors.js';
export { openCheckpoint, openShardedCheckpoint, checkpointFromArrays } from './engine/checkpoint.js';
export type { Checkpoint } from './engine/checkpoint.js';
export { randomCheckpoint } from './engine/random.js';
export { uploadWeights } from './engine/weights.js';
export type { GPT2Weights } from './engine/weights.js';
export { urlSource, fileSource, blobSource } from './engine/sources-web.js';
