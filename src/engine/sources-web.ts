/**
 * Model sources for browsers (no Node built-ins): a base URL serving config.json and
 * model.safetensors (e.g. https://huggingface.co/openai-community/gpt2/resolve/main), or files the
 * user picked (<input type=file multiple> / drag and drop).
 *
 * urlSource reads the safetensors header and then each tensor with HTTP Range requests when the
 * server honours them (a 206 answer), so nothing but the tensor being uploaded is in memory; a
 * server without Range support gets one whole-file fetch with progress.
 */
import { DownloadError, WeightsFormatError } from '../errors.js';
import { Checkpoint, openCheckpoint } from './checkpoint.js';
import { ByteSource, bytesSource } from './safetensors.js';

export interface UrlSourceOptions {
  /** Progress of whole-file downloads (ranged reads report nothing: the upload reports progress). */
  onProgress?: (p: { file: string; loadedBytes: number; totalBytes: number }) => void;
  /** Fetch the whole file once even if the server supports Range. */
  wholeFile?: boolean;
  /** Extra request headers (e.g. authorization). */
  headers?: Record<string, string>;
  fetch?: typeof fetch;
}

/** Opens `<baseUrl>/config.json` + `<baseUrl>/model.safetensors` as a validated Checkpoint. */
export async function urlSource(baseUrl: string, opts: UrlSourceOptions = {}): Promise<Checkpoint> {
  const f = opts.fetch ?? fetch;
  const base = baseUrl.replace(/\/+$/, '');
  const get = async (url: string, headers: Record<string, string> = {}): Promise<Response> => {
    let res: Response;
    try {
      res = await f(url, { headers: { ...opts.headers, ...headers } });
    } catch (e) {
      throw new DownloadError(`${url}: request failed (${(e as Error).message})`, { cause: e });
    }
    if (!res.ok) throw new DownloadError(`${url}: HTTP ${res.status}${res.status === 404 ? ' (not found)' : ''}`);
    return res;
  };
  const cfgUrl = `${base}/config.json`;
  let json: unknown;
  try {
    json = await (await get(cfgUrl)).json();
  } catch (e) {
    if (e instanceof DownloadError) throw e;
    throw new WeightsFormatError(`${cfgUrl}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  const stUrl = `${base}/model.safetensors`;
  let src: ByteSource;
  if (!opts.wholeFile) {
    // Probe: the first 8 bytes by Range. 206 + Content-Range gives the size and proves Range works.
    const probe = await get(stUrl, { range: 'bytes=0-7' });
    const total = Number(/\/(\d+)\s*$/.exec(probe.headers.get('content-range') ?? '')?.[1]);
    if (probe.status === 206 && Number.isSafeInteger(total)) {
      await probe.arrayBuffer();
      src = {
        name: stUrl,
        size: total,
        async read(offset, length) {
          if (length === 0) return new Uint8Array(0);
          const res = await get(stUrl, { range: `bytes=${offset}-${offset + length - 1}` });
          const body = new Uint8Array(await res.arrayBuffer());
          // A 200 here means the server ignored Range: take our slice of the whole body.
          return res.status === 206 ? body : body.subarray(offset, offset + length);
        },
      };
    } else {
      src = bytesSource(stUrl, await readBody(probe, stUrl, opts));
    }
  } else {
    src = bytesSource(stUrl, await readBody(await get(stUrl), stUrl, opts));
  }
  return openCheckpoint(json, src, base);
}

/** Reads a whole response body, reporting progress against Content-Length. */
async function readBody(res: Response, url: string, opts: UrlSourceOptions): Promise<Uint8Array> {
  const total = Number(res.headers.get('content-length') ?? NaN);
  if (!res.body || !Number.isSafeInteger(total)) return new Uint8Array(await res.arrayBuffer());
  const out = new Uint8Array(total);
  let at = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.byteLength > total) throw new DownloadError(`${url}: body longer than its Content-Length ${total}`);
    out.set(value, at);
    at += value.byteLength;
    opts.onProgress?.({ file: 'model.safetensors', loadedBytes: at, totalBytes: total });
  }
  if (at !== total) throw new DownloadError(`${url}: body ended after ${at} of ${total} bytes`);
  return out;
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
  const st = files.find((f) => f.name === 'model.safetensors') ?? files.find((f) => f.name.endsWith('.safetensors'));
  if (!st) throw new WeightsFormatError(`no .safetensors file among the chosen files (${names})`);
  let json: unknown;
  try {
    json = JSON.parse(await cfg.text());
  } catch (e) {
    throw new WeightsFormatError(`config.json: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  return openCheckpoint(json, blobSource(st, st.name), st.name);
}
