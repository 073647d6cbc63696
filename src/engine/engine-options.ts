/**
 * What Engine.create and loadModel take: the option records, their names (checked against the
 * interfaces at compile time) and the checks run before anything reads them.
 */
import type { ContextOptions } from '../gpu/device.js';
import type { PartialProfile } from '../kernels/profile.js';
import { InvalidOptionError } from '../errors.js';
import { checkOptions, optionNames } from '../sampling/names.js';
import type { Checkpoint } from './checkpoint.js';
import type { LoadOptions } from './model.js';
import { preview } from './safetensors.js';

/**
 * Progress of a load, phase by phase: 'download' (bytes, a Hugging Face id or { url } not cached
 * yet), 'compile' (the GPU pipelines: loaded 0 of total 1 when they start, 1 of 1 when all are
 * built; they are built together, so there is nothing in between), then 'upload' (weight bytes
 * read and written to the GPU).
 */
export interface LoadProgress {
  phase: string;
  loaded: number;
  total: number;
}

/** Where a model comes from. Strings: 'random:<name|config path>' anywhere; in Node also a local
 *  directory or a Hugging Face id (see createEngine in the Node entry). */
export type ModelSource =
  | string
  | Checkpoint
  | { url: string }
  | { files: File[] }
  | { config: unknown; safetensors: ArrayBuffer | Uint8Array };

export type SourceResolver = (
  source: string,
  opts: { onProgress?: (p: LoadProgress) => void; download?: DownloadOptions },
) => Promise<Checkpoint>;

/** How the Node entry fetches a Hugging Face id (the resolver's options; other sources ignore them). */
export interface DownloadOptions {
  /** Branch, tag or commit (default 'main'). */
  revision?: string;
  /** Access token (default $HF_TOKEN). */
  token?: string;
  /** HF cache root (default $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub). */
  cacheDir?: string;
  /** Hub base URL (default $HF_ENDPOINT or https://huggingface.co). */
  hubUrl?: string;
  /** Never touch the network (default: $HF_HUB_OFFLINE is 1 / true). */
  offline?: boolean;
  /** Attempts per file after cut connections (default 4). */
  attempts?: number;
  /** A request or body idle this long (ms) is cut (default $HF_HUB_DOWNLOAD_TIMEOUT s, else 10 s). */
  idleTimeoutMs?: number;
}

const DOWNLOAD_KEYS = ['revision', 'token', 'cacheDir', 'hubUrl', 'offline', 'attempts', 'idleTimeoutMs'];

/** ModelLoadOptions.download as given, or InvalidOptionError naming an unknown key (a typo must not pass). */
export function checkDownload(d: DownloadOptions | undefined): DownloadOptions | undefined {
  return d === undefined ? undefined : checkOptions(d, DOWNLOAD_KEYS, 'download option');
}

export interface EngineOptions extends ContextOptions {
  /** The WebGPU entry (navigator.gpu, or Node's from nodeGPU()). */
  gpu?: GPU;
  /** Or a device the host already has: the engine uses it and never destroys it. */
  device?: GPUDevice;
  /** Resolves string sources other than random: (the Node entry installs one for dirs and HF ids). */
  resolveSource?: SourceResolver;
}

export interface ModelLoadOptions extends LoadOptions {
  onProgress?: (p: LoadProgress) => void;
  /** Seed of random: weights (default 0). */
  seed?: number;
  /** How a Hugging Face id is downloaded (revision, token, cache, timeouts); the Node entry's. */
  download?: DownloadOptions;
  /** Not a stable interface: may change in any release. */
  experimental?: {
    /**
     * The device profile (every kernel choice) to use instead of the adapter's: a built-in one by
     * `name` and / or fields merged over it (tests run the GPU profile on CPU adapters; benchmarks
     * compare choices). Checked against the device: InvalidOptionError names a bad field.
     */
    profile?: PartialProfile;
  };
}

export const ENGINE_OPTIONS = optionNames<EngineOptions>({
  powerPreference: true,
  forceFallbackAdapter: true,
  disableFeatures: true,
  waitYield: true,
  yieldWhileWaiting: true,
  gpu: true,
  device: true,
  resolveSource: true,
});
const LOAD_OPTIONS = optionNames<ModelLoadOptions>({
  dtype: true,
  kvDtype: true,
  promptBuckets: true,
  onProgress: true,
  seed: true,
  download: true,
  experimental: true,
});

/** A { url } or { files } source's field of the right type (InvalidOptionError otherwise). */
export function checkSourceShape(source: object): void {
  if ('url' in source && typeof source.url !== 'string')
    throw new InvalidOptionError(`model source { url }: url must be a string (a folder URL), got ${typeof source.url}`);
  if ('files' in source && !(Array.isArray(source.files) && source.files.every((f) => f instanceof Blob)))
    throw new InvalidOptionError(
      'model source { files }: files must be an array of File objects (an <input type=file> list)',
    );
}

/** The load options' object and names (experimental's too), before anything reads them. */
export function checkLoadOptions(opts: ModelLoadOptions): void {
  checkOptions(opts, LOAD_OPTIONS, 'load option');
  checkOptions(opts.experimental, ['profile'], 'experimental option');
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function')
    throw new InvalidOptionError(`onProgress must be a function, got ${typeof opts.onProgress}`);
  const seed = opts.seed;
  if (seed !== undefined && !(typeof seed === 'number' && Number.isSafeInteger(seed) && seed >= 0))
    throw new InvalidOptionError(`seed (of random: weights) must be an integer in [0, 2^53), got ${preview(seed)}`);
}
