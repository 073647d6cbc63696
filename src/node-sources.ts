/**
 * Model sources in Node (uses fs, crypto, fetch): random models, local directories, and Hugging Face
 * hub ids downloaded once into the standard HF cache that Python's huggingface_hub also uses:
 *
 *   <cache>/models--<org>--<name>/blobs/<etag>                 file contents (etag: LFS sha256 or git sha1)
 *                                /snapshots/<commit>/<file>    symlink -> ../../blobs/<etag>
 *                                /refs/<revision>              the commit the revision pointed at
 *   <cache> = $HF_HUB_CACHE | $HUGGINGFACE_HUB_CACHE | $HF_HOME/hub | $XDG_CACHE_HOME/huggingface/hub | ~/.cache/huggingface/hub
 *
 * A cached revision is used without any request. Downloads go to `<blob>.incomplete`, resume with
 * HTTP Range after a cut connection (also across runs), and are checked against the hub's size and
 * hash (sha256 for LFS files, git's blob sha1 otherwise) before being moved into place. A body that
 * passes the announced size is cut at once; a connection idle for the idle timeout (no answer, or a
 * drip of under 1 KiB in that time: `idleTimeoutMs`, $HF_HUB_DOWNLOAD_TIMEOUT in seconds, default
 * 10 s) is cut and resumed like a broken one. Revisions must be git ref names or commits, and etags
 * sha256 / git sha1 hashes, before either is used in a path; the token goes to the hub's origin only.
 * One blob is fetched by one party at a time: loads in this process share the running download,
 * other processes wait on the lock file `<cache>/.locks/<repo folder>/<etag>.gpt2-webgpu.lock`
 * (see `acquireLock`), so two programs starting on the same model download it once.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, createReadStream, existsSync, fstatSync, openSync, readSync, statSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { hostname } from 'node:os';
import { copyFile, mkdir, open, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { getHFHubCachePath, getRepoFolderName } from '@huggingface/hub';
import { DownloadError, InvalidOptionError, WeightsFormatError } from './errors.js';
import {
  Checkpoint,
  openCheckpoint,
  openShardedCheckpoint,
  SHARD_INDEX,
  singleOrSharded,
} from './engine/checkpoint.js';
import type { DownloadOptions } from './engine/engine-options.js';
import { HUB_REPOS, isKnownModel, MAX_CONFIG_BYTES } from './engine/config.js';
import { randomCheckpoint } from './engine/random.js';
import { preview, type ByteSource } from './engine/safetensors.js';

export interface DownloadProgress {
  /** Repository-relative file name (config.json, model.safetensors). */
  file: string;
  loadedBytes: number;
  totalBytes: number;
}

/** resolveSource's options: how a hub id is fetched (DownloadOptions), the progress callback, random:'s seed. */
export interface SourceOptions extends DownloadOptions {
  onProgress?: (p: DownloadProgress) => void;
  /** Seed of `random:` sources (default 0). */
  seed?: number;
}

/** Idle timeout when neither the option nor $HF_HUB_DOWNLOAD_TIMEOUT sets one (Python's default too). */
export const DEFAULT_IDLE_TIMEOUT_MS = 10_000;
/** A body that receives fewer bytes than this in one idle-timeout window is stalled (a drip). */
const STALL_BYTES = 1024;

/** The idle timeout in ms from the option or $HF_HUB_DOWNLOAD_TIMEOUT (seconds); InvalidOptionError if bad. */
function idleTimeoutOf(opts: SourceOptions): number {
  const v = opts.idleTimeoutMs;
  if (v !== undefined) {
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v))
      throw new InvalidOptionError(`idleTimeoutMs must be a number > 0, got ${preview(v)}`);
    return v;
  }
  const env = process.env.HF_HUB_DOWNLOAD_TIMEOUT;
  if (env === undefined || env.trim() === '') return DEFAULT_IDLE_TIMEOUT_MS;
  const sec = Number(env);
  if (!(sec > 0) || !Number.isFinite(sec))
    throw new InvalidOptionError(
      `HF_HUB_DOWNLOAD_TIMEOUT ${preview(env)} is not a number of seconds > 0 (e.g. 30); unset it for the default ${DEFAULT_IDLE_TIMEOUT_MS / 1000} s`,
    );
  return sec * 1000;
}

/**
 * Refuses a revision that is not a 40-hex commit or a git ref name (git check-ref-format, roughly):
 * it is a path under refs/ in the cache, so "..", a leading "/", control characters and the like
 * would reach outside it.
 */
function checkRevision(revision: unknown): string {
  const bad = (why: string): never => {
    throw new InvalidOptionError(
      `revision ${preview(revision)} is not a branch, tag or commit name (${why}); use e.g. main, v1.0, refs/pr/1 or a 40-hex commit`,
    );
  };
  if (typeof revision !== 'string') return bad(`a ${revision === null ? 'null' : typeof revision}, not a string`);
  if (isCommit(revision)) return revision;
  if (revision.length === 0 || revision.length > 255) bad(`${revision.length} characters; 1 to 255 allowed`);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(revision)) bad('no spaces, control characters or any of ~ ^ : ? * [ \\');
  if (revision.includes('..') || revision.includes('@{') || revision === '@') bad('no "..", "@{" or lone "@"');
  if (/^[/-]|\/$|\/\/|\.$/.test(revision)) bad('no leading "/" or "-", no trailing "/" or ".", no "//"');
  if (revision.split('/').some((c) => c.startsWith('.') || c.endsWith('.lock')))
    bad('no part starting with "." or ending with ".lock"');
  return revision;
}

/** What a non-regular file is ('a directory', 'a FIFO (named pipe)', ...), or null for a regular file. */
function notRegular(st: Stats): string | null {
  if (st.isFile()) return null;
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'a special file';
}

/**
 * Reads a regular file of at most `maxBytes` bytes (config.json, a CLI --logits file). Anything
 * else fails before a byte is read, with an Error whose message says why without the path (the
 * caller names the file): "a FIFO (named pipe), not a regular file", "N bytes, more than the M
 * allowed", or the fs error (with its code). The type is checked before opening (a FIFO would
 * block) and again on the opened file, which is opened non-blocking; at most maxBytes + 1 bytes
 * are read whatever the size reported (files in /proc report 0).
 */
export function readBoundedFileSync(path: string, maxBytes: number): Buffer {
  const check = (st: Stats) => {
    const what = notRegular(st);
    if (what) throw new Error(`${what}, not a regular file`);
    if (st.size > maxBytes) throw new Error(`${st.size} bytes, more than the ${maxBytes} allowed`);
  };
  check(statSync(path));
  const fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  try {
    check(fstatSync(fd));
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(1 << 16, maxBytes + 1 - total));
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      chunks.push(buf.subarray(0, n));
      total += n;
      if (total > maxBytes) throw new Error(`more than the ${maxBytes} bytes allowed`);
    }
    return Buffer.concat(chunks, total);
  } finally {
    closeSync(fd);
  }
}

/** readBoundedFileSync as a promise (config files are small: the sync read is brief). */
async function readConfigFile(path: string): Promise<string> {
  return readBoundedFileSync(path, MAX_CONFIG_BYTES).toString('utf8');
}

/** A ByteSource over a file on disk (opened per read, so nothing stays open). */
export async function fileByteSource(path: string): Promise<ByteSource> {
  const st = await stat(path);
  const what = notRegular(st);
  if (what)
    throw new WeightsFormatError(`${path}: ${what}, not a regular file (a model needs model.safetensors as a file)`);
  const { size } = st;
  return {
    name: path,
    size,
    async read(offset, length) {
      const fh = await open(path, 'r');
      try {
        const buf = new Uint8Array(length);
        let got = 0;
        while (got < length) {
          const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        return got === length ? buf : buf.subarray(0, got);
      } finally {
        await fh.close();
      }
    },
  };
}

/** Opens a directory holding config.json + model.safetensors (or a sharded checkpoint's index and shards). */
export async function openLocalDir(dir: string): Promise<Checkpoint> {
  const cfgPath = join(dir, 'config.json');
  const stPath = join(dir, 'model.safetensors');
  if (!existsSync(cfgPath))
    throw new WeightsFormatError(
      `${dir}: no config.json in this directory (a model directory needs config.json and model.safetensors)`,
    );
  const indexPath = join(dir, SHARD_INDEX);
  if (!existsSync(stPath) && existsSync(indexPath))
    return openShardedCheckpoint(
      await jsonFile(cfgPath),
      await jsonFile(indexPath),
      (file) => {
        const path = join(dir, file);
        if (!existsSync(path))
          throw new WeightsFormatError(`${dir}: ${SHARD_INDEX} names ${file}, which is not in the directory`);
        return fileByteSource(path);
      },
      dir,
    );
  if (!existsSync(stPath)) {
    const hint = existsSync(join(dir, 'pytorch_model.bin'))
      ? ' (only pytorch_model.bin is there; convert it to safetensors)'
      : '';
    throw new WeightsFormatError(`${dir}: no model.safetensors in this directory${hint}`);
  }
  return openCheckpoint(await jsonFile(cfgPath), await fileByteSource(stPath), dir);
}

/** A small JSON file (config.json, a shard index: a regular file of at most MAX_CONFIG_BYTES) read and parsed; WeightsFormatError otherwise. */
async function jsonFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readConfigFile(path);
  } catch (e) {
    throw new WeightsFormatError(`${path}: cannot read it (${(e as Error).message})`, { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new WeightsFormatError(`${path}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/**
 * Resolves a model source:
 *   - `random:<name>` (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2) or `random:<config.json path>`
 *   - a local directory with config.json and model.safetensors (or the path of that model.safetensors)
 *   - a hub id: gpt2, gpt2-xl, distilgpt2, openai-community/gpt2, any org/name (downloaded once)
 */
export async function resolveSource(source: string, opts: SourceOptions = {}): Promise<Checkpoint> {
  if (source.startsWith('random:')) {
    const spec = source.slice('random:'.length);
    if (spec.endsWith('.json') || spec.includes('/') || spec.includes('\\')) {
      let json: unknown;
      try {
        json = JSON.parse(await readConfigFile(spec));
      } catch (e) {
        throw new WeightsFormatError(`${spec}: cannot read config for a random model (${(e as Error).message})`, {
          cause: e,
        });
      }
      return randomCheckpoint(json as never, opts.seed ?? 0);
    }
    return randomCheckpoint(spec, opts.seed ?? 0);
  }
  if (existsSync(source)) {
    const st = await stat(source);
    return openLocalDir(st.isDirectory() ? source : dirname(source));
  }
  if (/^(\.{0,2}[/\\]|~)/.test(source) || source.endsWith('.safetensors') || source.endsWith('.json')) {
    throw new WeightsFormatError(
      `${source}: no such file or directory (a model source is random:<name>, a directory, or a hub id such as gpt2)`,
    );
  }
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(source)) {
    throw new InvalidOptionError(
      `"${source}" is not a model source: use random:<name>, a local directory, or a hub id like gpt2 or openai-community/gpt2`,
    );
  }
  const repo = isKnownModel(source) ? HUB_REPOS[source] : source;
  const cfgPath = await hubFile(repo, 'config.json', opts, source);
  // No model.safetensors in the repo (or, offline, in the cache): a sharded checkpoint's index and shards.
  return singleOrSharded(
    async () =>
      openCheckpoint(
        await jsonFile(cfgPath),
        await fileByteSource(await hubFile(repo, 'model.safetensors', opts, source)),
        repo,
      ),
    async () => jsonFile(await hubFile(repo, SHARD_INDEX, opts, source)),
    async (index) =>
      openShardedCheckpoint(
        await jsonFile(cfgPath),
        index,
        async (file) => fileByteSource(await hubFile(repo, file, opts, source)),
        repo,
      ),
  );
}

/** Cache folders that may hold `repo`: its own, then the short legacy alias (models--gpt2). */
function repoFolders(cache: string, repo: string, asked: string): string[] {
  const names = new Set([repo, asked]);
  for (const [alias, full] of Object.entries(HUB_REPOS)) if (full === repo) names.add(alias);
  return [...names].map((n) => join(cache, getRepoFolderName({ name: n, type: 'model' })));
}

const isCommit = (s: string) => /^[0-9a-f]{40}$/.test(s);
/** An etag the download can be checked against: a sha256 (LFS) or git blob sha1, lower-case hex. */
const isHashEtag = (s: string) => /^([0-9a-f]{40}|[0-9a-f]{64})$/.test(s);

/** The cached path of `file` at `revision` in any folder of `repo`, or null. Makes no request. */
async function cached(folders: string[], revision: string, file: string): Promise<string | null> {
  for (const folder of folders) {
    let commit = isCommit(revision) ? revision : null;
    if (!commit) {
      try {
        commit = readBoundedFileSync(join(folder, 'refs', revision), 4096)
          .toString('utf8')
          .trim();
      } catch {
        continue;
      }
      if (!isCommit(commit)) continue; // not what a ref file holds: ignore it, ask the hub
    }
    const p = join(folder, 'snapshots', commit, file);
    if (existsSync(p)) return p; // existsSync follows the symlink: a dangling one does not count
  }
  return null;
}

/** Downloads (or finds in the cache) one file of a hub repo; returns its snapshot path. */
export async function hubFile(repo: string, file: string, opts: SourceOptions = {}, asked = repo): Promise<string> {
  const cache = opts.cacheDir ?? getHFHubCachePath();
  const revision = checkRevision(opts.revision ?? 'main');
  const idleMs = idleTimeoutOf(opts);
  const attempts = opts.attempts ?? 4;
  if (!Number.isSafeInteger(attempts) || attempts < 1)
    throw new InvalidOptionError(`attempts must be an integer >= 1, got ${preview(attempts)}`);
  const folders = repoFolders(cache, repo, asked);
  const hit = await cached(folders, revision, file);
  if (hit) return hit;
  const offline = opts.offline ?? /^(1|true|yes|on)$/i.test(process.env.HF_HUB_OFFLINE ?? '');
  if (offline)
    throw new DownloadError(
      `${repo}/${file} (revision ${revision}) is not in the cache ${cache} and offline mode is on (HF_HUB_OFFLINE)`,
      { missing: true },
    );

  const hub = (opts.hubUrl ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const token = opts.token ?? process.env.HF_TOKEN;
  const auth: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const url = `${hub}/${repo}/resolve/${encodeURIComponent(revision)}/${file}`;
  const meta = await headInfo(url, auth, `${repo}/${file}`, idleMs);

  const folder = folders[0]!;
  const blob = join(folder, 'blobs', meta.etag);
  const pointer = join(folder, 'snapshots', meta.commit, file);
  try {
    await mkdir(dirname(blob), { recursive: true });
    await mkdir(dirname(pointer), { recursive: true });
    if (!isCommit(revision) || revision !== meta.commit) {
      const ref = join(folder, 'refs', revision); // refs/pr/1 is a path: refs/refs/pr/1
      await mkdir(dirname(ref), { recursive: true });
      await writeFile(ref, meta.commit);
    }
  } catch (e) {
    throw new DownloadError(
      `cannot write to the Hugging Face cache ${cache} (${(e as Error).message}); point HF_HUB_CACHE (or the cacheDir option) at a writable directory`,
      { cause: e },
    );
  }
  const lock = join(cache, '.locks', basename(folder), `${meta.etag}.gpt2-webgpu.lock`);
  // Keyed by the snapshot path: two revisions sharing a blob each get their link (the lock orders them).
  await once(pointer, async () => {
    const release = await acquireLock(lock, `${blob}.incomplete`, (loadedBytes) =>
      opts.onProgress?.({ file, loadedBytes, totalBytes: meta.size }),
    );
    try {
      // Whoever held the lock before may have finished it.
      if (!(existsSync(blob) && (await stat(blob)).size === meta.size))
        await download(url, auth, blob, meta, file, { ...opts, attempts, idleTimeoutMs: idleMs });
      await linkBlob(blob, pointer);
    } finally {
      await release();
    }
  });
  return pointer;
}

/** Running fetches of a file in this process, so a second load of the same file joins the first. */
const inFlight = new Map<string, Promise<void>>();

function once(key: string, job: () => Promise<void>): Promise<void> {
  let p = inFlight.get(key);
  if (!p) {
    p = job().finally(() => inFlight.delete(key));
    inFlight.set(key, p);
  }
  return p;
}

/** A held lock not touched for this long is abandoned (its holder refreshes it every LOCK_REFRESH_MS). */
const LOCK_STALE_MS = 120_000;
const LOCK_REFRESH_MS = 10_000;
const LOCK_POLL_MS = 100;

/**
 * Takes the download lock `path` (created exclusively; holds {pid, host}); returns its release.
 * While another party holds it, waits, reporting the size of their partial file `part` through
 * `onWait`. A lock is taken over when its holder is gone: a process of this host that no longer
 * exists, or (another host sharing the cache, or a holder that died before writing the file) a
 * lock file whose mtime is older than LOCK_STALE_MS. Python's huggingface_hub uses flock on its
 * own lock files, so it does not see this one; the two tools do not share partial downloads.
 */
async function acquireLock(path: string, part: string, onWait: (bytes: number) => void): Promise<() => Promise<void>> {
  let reported = -1;
  for (;;) {
    try {
      await mkdir(dirname(path), { recursive: true });
      const fh = await open(path, 'wx');
      try {
        await fh.writeFile(JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() }));
      } finally {
        await fh.close();
      }
      const refresh = setInterval(() => {
        const now = new Date();
        utimes(path, now, now).catch(() => {});
      }, LOCK_REFRESH_MS);
      refresh.unref();
      return async () => {
        clearInterval(refresh);
        await rm(path, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new DownloadError(`cannot create the download lock ${path}: ${(e as Error).message}`, { cause: e });
      }
    }
    const held = await lockHolder(path);
    if (held.state === 'gone') {
      // Removed only if it is still the file judged stale (a new holder's lock is a new inode with
      // a new mtime); a narrow race remains between this check and rm.
      const now = await stat(path).catch(() => null);
      if (now && now.ino === held.ino && now.mtimeMs === held.mtimeMs) {
        await rm(path, { force: true }).catch((e) => {
          throw new DownloadError(
            `cannot remove the abandoned download lock ${path} (${(e as Error).message}); delete it by hand`,
            { cause: e },
          );
        });
      }
      continue;
    }
    if (held.state === 'held') {
      const bytes = (await stat(part).catch(() => ({ size: -1 }))).size;
      if (bytes >= 0 && bytes !== reported) onWait((reported = bytes));
    }
    await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
  }
}

/** The lock file at `path`: 'held', 'gone' (stale: take it over) or 'free' (released meanwhile). */
async function lockHolder(path: string): Promise<{ state: 'held' | 'gone' | 'free'; ino?: number; mtimeMs?: number }> {
  let text: string;
  let ino: number;
  let mtimeMs: number;
  try {
    ({ ino, mtimeMs } = await stat(path));
    text = readBoundedFileSync(path, 4096).toString('utf8');
  } catch {
    return { state: 'free' };
  }
  let holder: { pid?: unknown; host?: unknown } = {};
  try {
    holder = JSON.parse(text) as typeof holder;
  } catch {
    // Not written yet (or never will be): only its age can tell.
  }
  const dead = holder.host === hostname() && Number.isSafeInteger(holder.pid) && !processAlive(holder.pid as number);
  return { state: dead || Date.now() - mtimeMs > LOCK_STALE_MS ? 'gone' : 'held', ino, mtimeMs };
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

interface HeadInfo {
  commit: string;
  etag: string;
  size: number;
}

/**
 * HEAD on the resolve URL: commit, etag (LFS sha256 or git sha1) and size, as the hub reports them.
 * Redirects within the hub's origin (a renamed repo) are followed with the token; any other one
 * (the LFS CDN) is not: its own headers describe the file.
 */
async function headInfo(url: string, auth: Record<string, string>, what: string, idleMs: number): Promise<HeadInfo> {
  let res: Response;
  let at = url;
  const origin = new URL(url).origin;
  for (let hops = 0; ; hops++) {
    try {
      res = await fetch(at, {
        method: 'HEAD',
        redirect: 'manual',
        headers: { ...auth, 'accept-encoding': 'identity' },
        signal: AbortSignal.timeout(idleMs),
      });
    } catch (e) {
      if ((e as Error).name === 'TimeoutError')
        throw new DownloadError(
          `${what}: no answer from ${new URL(at).origin} within ${idleMs / 1000} s (the idle timeout: idleTimeoutMs or HF_HUB_DOWNLOAD_TIMEOUT)`,
          { cause: e },
        );
      throw new DownloadError(
        `${what}: cannot reach ${new URL(at).origin} (${(e as Error).message}${causeOf(e)}). Check the network, or use a local directory / the cache (HF_HUB_OFFLINE=1)`,
        { cause: e },
      );
    }
    // A relative redirect within the hub's origin is a renamed repo: follow it. An absolute one
    // is the LFS CDN: its headers (x-linked-*) already describe the file, and the token must not
    // go there. The origin is compared as parsed URLs, as "//other-host/..." and "/\other-host"
    // are relative references to other hosts.
    const loc = res.headers.get('location');
    let next: URL | null;
    try {
      next = loc && !/^[a-z][a-z\d+.-]*:/i.test(loc) ? new URL(loc, at) : null;
    } catch {
      next = null; // not a URL: the end of the chain
    }
    if (res.status >= 300 && res.status < 400 && next?.origin === origin && hops < 5) {
      at = next.toString();
      continue;
    }
    break;
  }
  if (res.status === 404 || res.status === 401 || res.status === 403) {
    const code = res.headers.get('x-error-code');
    const why =
      code === 'EntryNotFound'
        ? `the repo has no file ${what.split('/').pop()}`
        : code === 'RevisionNotFound'
          ? 'no such revision'
          : 'no such repo, or it is private/gated (set HF_TOKEN)';
    throw new DownloadError(`${what}: HTTP ${res.status} from ${url}: ${why}`, { missing: res.status === 404 });
  }
  if (res.status >= 400) throw new DownloadError(`${what}: HTTP ${res.status} from ${url}`);
  const commit = res.headers.get('x-repo-commit');
  const rawEtag = res.headers.get('x-linked-etag') ?? res.headers.get('etag') ?? '';
  const etag = rawEtag.replace(/^W\//, '').replace(/"/g, '').toLowerCase();
  const sizeHeader = res.headers.get('x-linked-size') ?? res.headers.get('content-length');
  const size = Number(sizeHeader ?? NaN);
  if (!commit || !isCommit(commit) || !etag || !Number.isSafeInteger(size) || size < 0) {
    throw new DownloadError(
      `${what}: the hub's answer lacks x-repo-commit / etag / size (got ${preview(commit)}, ${preview(rawEtag)}, ${preview(sizeHeader)}); is ${origin} a Hugging Face hub?`,
    );
  }
  // The etag names the blob file and is what the download is checked against: a hash, or nothing.
  if (!isHashEtag(etag)) {
    throw new DownloadError(
      `${what}: the hub's etag ${preview(rawEtag)} is not a sha256 or git sha1 hash, so the download could not be checked; is ${origin} a Hugging Face hub?`,
    );
  }
  return { commit, etag, size };
}

function causeOf(e: unknown): string {
  const c = (e as { cause?: { message?: string } } | undefined)?.cause;
  return c?.message ? `: ${c.message}` : '';
}

/**
 * Ranged, resumable download into `<blob>.incomplete`, then size + hash check and rename. A body
 * that passes the announced size is refused at the first byte past it; one that stalls (under
 * STALL_BYTES in an idle-timeout window, or no answer) or ends short is resumed, `attempts` in all.
 */
async function download(
  url: string,
  auth: Record<string, string>,
  blob: string,
  meta: HeadInfo,
  file: string,
  opts: SourceOptions & { attempts: number; idleTimeoutMs: number },
): Promise<void> {
  const part = `${blob}.incomplete`;
  const { attempts, idleTimeoutMs: idleMs } = opts;
  const total = meta.size;
  const origin = new URL(url).origin;
  let lastErr: unknown;
  for (let attempt = 0; attempt < attempts; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 250 * attempt)); // back off before retrying
    let have = existsSync(part) ? (await stat(part)).size : 0;
    if (have > total) {
      await rm(part, { force: true });
      have = 0;
    }
    if (have === total) break;
    // The watchdog: each idle-timeout window must bring STALL_BYTES (or the rest of the file).
    const ac = new AbortController();
    let stalled: Error | null = null;
    let windowStart = have;
    const watchdog = setInterval(() => {
      if (have - windowStart < Math.min(STALL_BYTES, total - windowStart)) {
        stalled = new Error(
          `stalled: under ${STALL_BYTES} bytes in ${idleMs / 1000} s from ${origin} (the idle timeout: idleTimeoutMs or HF_HUB_DOWNLOAD_TIMEOUT)`,
        );
        ac.abort(stalled);
      }
      windowStart = have;
    }, idleMs);
    // Opened before the request, so the body is read from its first chunk on: bytes that arrive
    // and are still queued when the connection breaks are dropped by fetch, and would be lost.
    const fh = await open(part, 'a');
    let past = 0; // > 0: the byte count the body would have reached past `total`
    try {
      let res: Response;
      try {
        res = await fetch(url, {
          headers: { ...auth, 'accept-encoding': 'identity', ...(have > 0 ? { range: `bytes=${have}-` } : {}) },
          signal: ac.signal,
        });
      } catch (e) {
        lastErr = stalled ?? e;
        continue;
      }
      if (res.status === 416) {
        await res.body?.cancel().catch(() => {});
        await fh.truncate(0); // our partial does not fit the file any more
        continue;
      }
      if (res.status !== 200 && res.status !== 206) {
        await res.body?.cancel().catch(() => {});
        throw new DownloadError(`${file}: HTTP ${res.status} downloading ${url}`);
      }
      if (res.status === 200 && have > 0) {
        have = 0; // no range support: start over
        await fh.truncate(0);
      }
      windowStart = have;
      try {
        opts.onProgress?.({ file, loadedBytes: have, totalBytes: total });
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          if (have + chunk.byteLength > total) {
            past = have + chunk.byteLength;
            break; // leaving the loop cancels the body
          }
          await fh.write(chunk); // appended ('a'): at `have`
          have += chunk.byteLength;
          opts.onProgress?.({ file, loadedBytes: have, totalBytes: total });
        }
      } catch (e) {
        lastErr = stalled ?? e; // cut connection: resume from what we have
        continue;
      }
      if (past > 0) ac.abort();
      else if (have === total) break;
      else lastErr = new Error(`the body ended after ${have} of ${total} bytes`);
    } finally {
      clearInterval(watchdog);
      await fh.close();
    }
    if (past > 0) {
      await rm(part, { force: true });
      throw new DownloadError(
        `${file}: the server sent more than the ${total} bytes announced (refused at ${past} bytes); the partial file was deleted`,
      );
    }
  }
  const size = existsSync(part) ? (await stat(part)).size : 0;
  if (size !== total) {
    throw new DownloadError(
      `${file}: download incomplete after ${attempts} attempts (${size} of ${total} bytes; ${(lastErr as Error | undefined)?.message ?? 'no error'}${causeOf(lastErr)}). ` +
        `Run again to resume from ${part}`,
      { cause: lastErr },
    );
  }
  const got = await fileHash(part, meta.etag, total);
  if (got !== meta.etag) {
    await rm(part, { force: true });
    throw new DownloadError(
      `${file}: hash mismatch: the hub says ${meta.etag}, the downloaded ${total} bytes hash to ${got}; the partial file was deleted, run again`,
    );
  }
  await rename(part, blob);
}

/** sha256 (64-hex etag, LFS) or git blob sha1 (40-hex etag) of a file. */
async function fileHash(path: string, etag: string, size: number): Promise<string> {
  const h = etag.length === 64 ? createHash('sha256') : createHash('sha1');
  if (etag.length !== 64) h.update(`blob ${size}\0`);
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** snapshots/<commit>/<file> -> ../../blobs/<etag> (a copy where symlinks are not allowed). */
async function linkBlob(blob: string, pointer: string): Promise<void> {
  if (existsSync(pointer)) return;
  await rm(pointer, { force: true }); // a dangling link
  try {
    await symlink(relative(dirname(pointer), blob), pointer);
  } catch (e) {
    // Linked meanwhile by another process (copying onto that link would copy the blob onto itself).
    if ((e as NodeJS.ErrnoException).code === 'EEXIST' && existsSync(pointer)) return;
    await copyFile(resolve(blob), pointer);
  }
}
