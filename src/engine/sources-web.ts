/**
 * Model sources for browsers (no Node built-ins): a base URL serving config.json and
 * model.safetensors (e.g. https://huggingface.co/openai-community/gpt2/resolve/main), or files the
 * user picked (<input type=file multiple> / drag and drop).
 *
 * urlSource reads the safetensors header and then each tensor with HTTP Range requests when the
 * server honours them (a 206 answer), so nothing but the tensor being uploaded is in memory; a
 * server without Range support gets one whole-file fetch with progress, held in blocks allocated as
 * the bytes arrive (never from the announced size up front), up to `maxBytes`. A body longer or
 * shorter than its Content-Length, or cut, is a DownloadError with the bytes received.
 */
import { DownloadError, InvalidOptionError, WeightsFormatError } from '../errors.js';
import { Checkpoint, openCheckpoint, openShardedCheckpoint, SHARD_INDEX, singleOrSharded } from './checkpoint.js';
import { MAX_CONFIG_BYTES } from './config.js';
import { ByteSource, preview } from './safetensors.js';

export interface UrlSourceOptions {
  /** Progress of whole-file downloads (ranged reads report nothing: the upload reports progress). */
  onProgress?: (p: { file: string; loadedBytes: number; totalBytes: number }) => void;
  /** Fetch the whole file once even if the server supports Range. */
  wholeFile?: boolean;
  /** Extra request headers (e.g. authorization). */
  headers?: Record<string, string>;
  fetch?: typeof fetch;
  /** The most a whole-file download may hold in memory (default MAX_WHOLE_FILE_BYTES, 8 GiB). */
  maxBytes?: number;
}

/**
 * The most a whole-file download (a server without Range support) may hold in memory, unless
 * `maxBytes` says otherwise: 8 GiB, above the largest GPT-2 file (gpt2-xl in f32, 6.43 GB).
 */
export const MAX_WHOLE_FILE_BYTES = 8 * 2 ** 30;

/** Opens `<baseUrl>/config.json` + `<baseUrl>/model.safetensors` as a validated Checkpoint. */
export async function urlSource(baseUrl: string, opts: UrlSourceOptions = {}): Promise<Checkpoint> {
  const f = opts.fetch ?? fetch;
  const maxBytes = opts.maxBytes ?? MAX_WHOLE_FILE_BYTES;
  if (typeof maxBytes !== 'number' || !Number.isSafeInteger(maxBytes) || maxBytes < 0)
    throw new InvalidOptionError(`maxBytes must be a non-negative integer, got ${preview(maxBytes)}`);
  const base = baseUrl.replace(/\/+$/, '');
  const get = async (url: string, headers: Record<string, string> = {}): Promise<Response> => {
    let res: Response;
    try {
      res = await f(url, { headers: { ...opts.headers, ...headers } });
    } catch (e) {
      throw new DownloadError(`${url}: request failed (${(e as Error).message})`, { cause: e });
    }
    if (!res.ok)
      throw new DownloadError(`${url}: HTTP ${res.status}${res.status === 404 ? ' (not found)' : ''}`, {
        missing: res.status === 404,
      });
    return res;
  };
  const cfgUrl = `${base}/config.json`;
  const cfgBody = await readBody(await get(cfgUrl), cfgUrl, MAX_CONFIG_BYTES, 'a config.json may have');
  const json = jsonAt(cfgUrl, cfgBody);
  // Whole-file downloads (no Range support) of every file, shards included, share the maxBytes budget.
  let held = 0;
  const open = async (file: string): Promise<ByteSource> => {
    const got = await urlByteSource(`${base}/${file}`, get, maxBytes - held, opts);
    held += got.held;
    return got.src;
  };
  const indexUrl = `${base}/${SHARD_INDEX}`;
  // No model.safetensors: a sharded checkpoint's index, if the folder has one.
  return singleOrSharded(
    async () => openCheckpoint(json, await open('model.safetensors'), base),
    async () =>
      jsonAt(indexUrl, await readBody(await get(indexUrl), indexUrl, MAX_CONFIG_BYTES, 'a shard index may have')),
    (index) => openShardedCheckpoint(json, index, open, base),
  );
}

/** A small JSON body parsed; WeightsFormatError naming the URL otherwise. */
function jsonAt(url: string, body: HeldBody): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(contiguous(body)));
  } catch (e) {
    throw new WeightsFormatError(`${url}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/**
 * A ByteSource over the safetensors file at `stUrl`: read by Range requests when the server
 * answers the probe with 206, else fetched whole (with progress) up to `maxBytes`; `held`: the
 * bytes it keeps in memory.
 */
async function urlByteSource(
  stUrl: string,
  get: (url: string, headers?: Record<string, string>) => Promise<Response>,
  maxBytes: number,
  opts: UrlSourceOptions,
): Promise<{ src: ByteSource; held: number }> {
  const whole = (body: HeldBody) => ({ src: blocksSource(stUrl, body), held: body.size });
  if (opts.wholeFile)
    return whole(await readBody(await get(stUrl), stUrl, maxBytes, WHOLE_FILE, undefined, opts.onProgress));
  // Probe: the first 8 bytes by Range. 206 + Content-Range gives the size and proves Range works.
  const probe = await get(stUrl, { range: 'bytes=0-7' });
  const total = Number(/\/(\d+)\s*$/.exec(probe.headers.get('content-range') ?? '')?.[1]);
  if (!(probe.status === 206 && Number.isSafeInteger(total)))
    return whole(await readBody(probe, stUrl, maxBytes, WHOLE_FILE, undefined, opts.onProgress));
  await probe.body?.cancel().catch(() => {}); // the size was all we needed
  const src: ByteSource = {
    name: stUrl,
    size: total,
    async read(offset, length) {
      if (length === 0) return new Uint8Array(0);
      const res = await get(stUrl, { range: `bytes=${offset}-${offset + length - 1}` });
      // A 200 here means the server ignored Range: read the whole body up to our slice's end.
      if (res.status !== 206)
        return contiguous(await readBody(res, stUrl, offset + length, '', offset + length)).subarray(offset);
      return contiguous(await readBody(res, stUrl, length, 'the range asked for'));
    },
  };
  return { src, held: 0 };
}

const WHOLE_FILE = 'a whole-file download may hold in memory (maxBytes)';
/** Bodies are held in blocks of this many bytes, allocated as bytes arrive. */
const BLOCK_BYTES = 64 << 20;

/** A body held in memory: blocks of BLOCK_BYTES (the last one shorter or not full), `size` bytes in all. */
interface HeldBody {
  blocks: Uint8Array[];
  size: number;
}

/** The body as one array (a view when it fits one block). */
function contiguous(b: HeldBody): Uint8Array {
  if (b.blocks.length <= 1) return (b.blocks[0] ?? new Uint8Array(0)).subarray(0, b.size);
  const out = new Uint8Array(b.size);
  b.blocks.forEach((blk, i) =>
    out.set(blk.subarray(0, Math.min(BLOCK_BYTES, b.size - i * BLOCK_BYTES)), i * BLOCK_BYTES),
  );
  return out;
}

/** A ByteSource over a held body: a view within one block, a copy across blocks. */
function blocksSource(name: string, b: HeldBody): ByteSource {
  return {
    name,
    size: b.size,
    async read(offset, length) {
      const end = Math.min(offset + length, b.size);
      if (!(offset < end)) return new Uint8Array(0);
      const first = Math.floor(offset / BLOCK_BYTES);
      const last = Math.floor((end - 1) / BLOCK_BYTES);
      if (first === last) return b.blocks[first]!.subarray(offset - first * BLOCK_BYTES, end - first * BLOCK_BYTES);
      const out = new Uint8Array(end - offset);
      for (let i = first; i <= last; i++) {
        const from = Math.max(offset, i * BLOCK_BYTES);
        const to = Math.min(end, (i + 1) * BLOCK_BYTES);
        out.set(b.blocks[i]!.subarray(from - i * BLOCK_BYTES, to - i * BLOCK_BYTES), from - offset);
      }
      return out;
    },
  };
}

/**
 * Reads a response body into blocks allocated as the bytes arrive. Refuses a Content-Length or a
 * body past `max` (`why` says whose limit it is), a body longer than its Content-Length, and one
 * that ends short or is cut (DownloadError with the bytes received). With `stopAt`, stops (and
 * cancels the rest) once that many bytes are in; then `max` is `stopAt` and the length may be larger.
 */
async function readBody(
  res: Response,
  url: string,
  max: number,
  why: string,
  stopAt?: number,
  onProgress?: UrlSourceOptions['onProgress'],
): Promise<HeldBody> {
  const header = res.headers.get('content-length');
  const announced = header === null ? null : Number(header.trim() || NaN);
  if (announced !== null && !(Number.isSafeInteger(announced) && announced >= 0)) {
    await res.body?.cancel().catch(() => {});
    throw new DownloadError(`${url}: Content-Length ${preview(header)} is not a byte count`);
  }
  if (announced !== null && announced > max && stopAt === undefined) {
    await res.body?.cancel().catch(() => {});
    throw new DownloadError(
      `${url}: announces ${announced} bytes (Content-Length), more than the ${max} bytes ${why}` +
        (why === WHOLE_FILE ? '; serve it with HTTP Range support, or raise maxBytes' : ''),
    );
  }
  const cap = Math.min(max, announced ?? Infinity); // the most this body can hold
  const blocks: Uint8Array[] = [];
  let at = 0;
  const append = (chunk: Uint8Array) => {
    for (let off = 0; off < chunk.byteLength;) {
      const i = Math.floor(at / BLOCK_BYTES);
      if (i === blocks.length) {
        const n = Math.min(BLOCK_BYTES, cap - i * BLOCK_BYTES);
        try {
          blocks.push(new Uint8Array(n));
        } catch (e) {
          throw new DownloadError(
            `${url}: out of memory holding the body (${at} of ${announced ?? 'an unannounced number of'} bytes received, another ${n} asked for)`,
            { cause: e },
          );
        }
      }
      const blk = blocks[i]!;
      const into = at - i * BLOCK_BYTES;
      const n = Math.min(chunk.byteLength - off, blk.byteLength - into);
      blk.set(chunk.subarray(off, off + n), into);
      off += n;
      at += n;
    }
  };
  if (!res.body) {
    if (announced) throw new DownloadError(`${url}: no body, but ${announced} bytes announced`);
    return { blocks, size: 0 };
  }
  const reader = res.body.getReader();
  let finished = false;
  try {
    for (;;) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        const cause = (e as { cause?: { message?: string } }).cause?.message;
        throw new DownloadError(
          `${url}: connection cut after ${at} of ${announced ?? 'an unannounced number of'} bytes (${(e as Error).message}${cause ? `: ${cause}` : ''})`,
          { cause: e },
        );
      }
      if (r.done) {
        finished = true;
        break;
      }
      const chunk = r.value;
      if (announced !== null && at + chunk.byteLength > announced)
        throw new DownloadError(`${url}: body longer than its Content-Length ${announced}`);
      if (stopAt !== undefined && at + chunk.byteLength >= stopAt) {
        append(chunk.subarray(0, stopAt - at));
        break;
      }
      if (at + chunk.byteLength > max) throw new DownloadError(`${url}: the body passes ${max} bytes, the most ${why}`);
      append(chunk);
      onProgress?.({ file: 'model.safetensors', loadedBytes: at, totalBytes: announced ?? at });
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
  }
  if (stopAt === undefined && announced !== null && at !== announced)
    throw new DownloadError(`${url}: body ended after ${at} of ${announced} bytes`);
  return { blocks, size: at };
}

/** A ByteSource over a Blob/File: reads slices on demand. */
export function blobSource(blob: Blob, name: string): ByteSource {
  return {
    name,
    size: blob.size,
    read: async (offset, length) => new Uint8Array(await blob.slice(offset, offset + length).arrayBuffer()),
  };
}

/** Opens user-picked files: config.json and one .safetensors file (model.safetensors preferred). */
export async function fileSource(files: File[]): Promise<Checkpoint> {
  const names = files.map((f) => f.name).join(', ') || 'none';
  const cfg = files.find((f) => f.name === 'config.json');
  if (!cfg)
    throw new WeightsFormatError(
      `no config.json among the chosen files (${names}); pick config.json and model.safetensors together`,
    );
  const parse = async (f: File): Promise<unknown> => {
    try {
      return JSON.parse(await f.text());
    } catch (e) {
      throw new WeightsFormatError(`${f.name}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
  };
  const index = files.find((f) => f.name === SHARD_INDEX);
  const single = files.find((f) => f.name === 'model.safetensors');
  if (index && !single) {
    // A sharded checkpoint: the index and every shard it names must be among the files.
    const shard = async (name: string) => {
      const f = files.find((x) => x.name === name);
      if (!f)
        throw new WeightsFormatError(`${SHARD_INDEX} names ${name}, which is not among the chosen files (${names})`);
      return blobSource(f, f.name);
    };
    if (index.size > MAX_CONFIG_BYTES)
      throw new WeightsFormatError(`${SHARD_INDEX}: ${index.size} bytes, more than an index may have`);
    return openShardedCheckpoint(await parse(cfg), await parse(index), shard, 'chosen files');
  }
  const st = single ?? files.find((f) => f.name.endsWith('.safetensors'));
  if (!st) throw new WeightsFormatError(`no .safetensors file among the chosen files (${names})`);
  return openCheckpoint(await parse(cfg), blobSource(st, st.name), st.name);
}
