/**
 * Hub downloads against a local HTTP server that answers like huggingface.co's resolve endpoint:
 * HEAD/GET /<repo>/resolve/<rev>/<file>; small files 200 with a quoted git-sha1 etag; LFS files a
 * 302 to a CDN path carrying x-repo-commit, x-linked-etag (sha256) and x-linked-size; the CDN
 * honours Range. The server can cut a connection mid-file and lie about a hash.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { AddressInfo } from 'node:net';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { spawn } from 'node:child_process';
import { hostname } from 'node:os';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DownloadError, WeightsFormatError } from '../src/errors.js';
import { DownloadProgress, resolveSource } from '../src/node-sources.js';
import { createEngine } from '../src/node.js';
import { InvalidOptionError } from '../src/errors.js';
import { makeSafetensors, rejectsWith, smallConfig } from './fixtures-util.js';

const COMMIT = 'a'.repeat(39) + '1';
const cfg = smallConfig();
const configBytes = Buffer.from(JSON.stringify({ ...cfg, model_type: 'gpt2' }));
let stBytes: Buffer;

interface Hub {
  url: string;
  log: Array<{ method: string; path: string; range?: string }>;
  /** Cut the next CDN GET after this many bytes. */
  cutAfter?: number;
  /** Announce this sha256 instead of the real one. */
  fakeSha?: string;
  /** Send CDN bodies in 8 pieces this many ms apart (so concurrent downloads overlap). */
  slowMs?: number;
  close(): Promise<void>;
}

/** The hub's CDN GETs so far (the downloads of model.safetensors). */
const cdnGets = (hub: Hub) => hub.log.filter((r) => r.path.startsWith('/cdn/') && r.method === 'GET');
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const gitSha1 = (b: Uint8Array) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

async function startHub(repo = 'openai-community/gpt2'): Promise<Hub> {
  const hub = { log: [] } as unknown as Hub;
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = decodeURIComponent(new URL(req.url!, 'http://x').pathname);
    hub.log.push({ method: req.method!, path, range: req.headers.range });
    const resolvePrefix = `/${repo}/resolve/`;
    if (path.startsWith('/cdn/')) {
      const body = stBytes;
      const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
      const from = m ? Number(m[1]) : 0;
      if (from >= body.length && m) {
        res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
        return;
      }
      const rest = body.subarray(from);
      res.writeHead(m ? 206 : 200, {
        'content-length': rest.length,
        'accept-ranges': 'bytes',
        ...(m ? { 'content-range': `bytes ${from}-${body.length - 1}/${body.length}` } : {}),
      });
      if (req.method === 'HEAD') return void res.end();
      if (hub.cutAfter !== undefined && hub.cutAfter < rest.length) {
        const n = hub.cutAfter;
        hub.cutAfter = undefined;
        res.write(rest.subarray(0, n), () => setTimeout(() => res.socket?.destroy(), 20));
        return;
      }
      if (hub.slowMs) {
        const piece = Math.ceil(rest.length / 8);
        let at = 0;
        const next = () => {
          if (at >= rest.length || res.destroyed) return void res.end();
          res.write(rest.subarray(at, at + piece));
          at += piece;
          setTimeout(next, hub.slowMs);
        };
        next();
        return;
      }
      res.end(rest);
      return;
    }
    if (!path.startsWith(resolvePrefix)) {
      res.writeHead(404, { 'x-error-code': 'RepoNotFound' }).end('Repository not found');
      return;
    }
    const [rev, file] = path.slice(resolvePrefix.length).split('/');
    if (rev !== 'main' && rev !== COMMIT) {
      res.writeHead(404, { 'x-error-code': 'RevisionNotFound' }).end();
      return;
    }
    if (file === 'config.json') {
      res.writeHead(200, {
        'x-repo-commit': COMMIT,
        etag: `"${gitSha1(configBytes)}"`,
        'content-length': configBytes.length,
      });
      res.end(req.method === 'HEAD' ? undefined : configBytes);
      return;
    }
    if (file === 'model.safetensors') {
      const sha = hub.fakeSha ?? sha256(stBytes);
      res.writeHead(302, {
        location: `http://127.0.0.1:${(server.address() as AddressInfo).port}/cdn/${sha}`,
        'x-repo-commit': COMMIT,
        'x-linked-etag': `"${sha}"`,
        'x-linked-size': stBytes.length,
        etag: '"someothergitsha"',
      });
      res.end();
      return;
    }
    res.writeHead(404, { 'x-error-code': 'EntryNotFound' }).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  hub.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  hub.close = () =>
    new Promise((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return hub;
}

const made: string[] = [];
const freshCache = () => {
  const d = mkdtempSync(join(tmpdir(), 'gpt2-hfcache-'));
  made.push(d);
  return d;
};
test.after(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

test.before(async () => {
  stBytes = Buffer.from((await makeSafetensors(cfg, { prefix: true })).bytes);
});

test('fresh download into the HF cache layout, then a second call served from the cache with no request', async () => {
  const hub = await startHub();
  const cacheDir = freshCache();
  try {
    const progress: DownloadProgress[] = [];
    const ck = await resolveSource('gpt2', { cacheDir, hubUrl: hub.url, onProgress: (p) => progress.push(p) });
    assert.equal(ck.config, cfg);
    assert.is(ck.source, 'openai-community/gpt2');
    const folder = join(cacheDir, 'models--openai-community--gpt2');
    assert.is(readFileSync(join(folder, 'refs', 'main'), 'utf8'), COMMIT);
    const link = join(folder, 'snapshots', COMMIT, 'model.safetensors');
    assert.ok(lstatSync(link).isSymbolicLink());
    assert.is(readlinkSync(link), join('..', '..', 'blobs', sha256(stBytes)));
    assert.equal(readFileSync(join(folder, 'blobs', sha256(stBytes))), stBytes);
    assert.ok(existsSync(join(folder, 'blobs', gitSha1(configBytes))));
    const last = progress.filter((p) => p.file === 'model.safetensors').pop()!;
    assert.equal(last, { file: 'model.safetensors', loadedBytes: stBytes.length, totalBytes: stBytes.length });
    assert.equal(
      Array.from(await ck.read('h.1.mlp.c_fc.bias')),
      Array.from((await makeSafetensors(cfg)).values.get('h.1.mlp.c_fc.bias')!),
    );

    const before = hub.log.length;
    await resolveSource('openai-community/gpt2', { cacheDir, hubUrl: hub.url });
    assert.is(hub.log.length, before, 'no request for a cached revision');
  } finally {
    await hub.close();
  }
});

test('engine.loadModel passes `download` (cache, hub, revision) to the download; a bad key or dtype is refused before any request', async () => {
  const hub = await startHub();
  const cacheDir = freshCache();
  const engine = await createEngine();
  try {
    await rejectsWith(
      engine.loadModel('gpt2', { download: { cacheDir, hubUrl: hub.url, revison: 'main' } as never }),
      InvalidOptionError,
      /^unknown download option "revison"\. Did you mean revision\? Valid options: revision, token, cacheDir, hubUrl, offline, attempts, idleTimeoutMs\.$/,
    );
    await rejectsWith(
      engine.loadModel('gpt2', { dtype: 'f8' as never, download: { cacheDir, hubUrl: hub.url } }),
      InvalidOptionError,
      /dtype must be/,
    );
    assert.is(hub.log.length, 0, 'refused before any request');
    const model = await engine.loadModel('gpt2', { download: { cacheDir, hubUrl: hub.url, revision: 'main' } });
    assert.is(model.config.n_embd, cfg.n_embd);
    assert.ok(existsSync(join(cacheDir, 'models--openai-community--gpt2', 'refs', 'main')), 'downloaded into cacheDir');
    assert.ok(hub.log.length > 0);
  } finally {
    engine.destroy();
    await hub.close();
  }
});

test('resumes with a Range request after the connection is cut mid-file (and across runs)', async () => {
  const hub = await startHub();
  const cacheDir = freshCache();
  try {
    hub.cutAfter = 3000;
    const ck = await resolveSource('gpt2', { cacheDir, hubUrl: hub.url });
    assert.is(ck.shape('wte.weight')[0], cfg.vocab_size);
    const cdn = cdnGets(hub);
    assert.is(cdn.length, 2);
    assert.is(cdn[0]!.range, undefined);
    assert.is(cdn[1]!.range, 'bytes=3000-');
    assert.equal(readFileSync(join(cacheDir, 'models--openai-community--gpt2', 'blobs', sha256(stBytes))), stBytes);

    // A partial file left by an earlier run is continued, not restarted.
    const cache2 = freshCache();
    const blobs = join(cache2, 'models--openai-community--gpt2', 'blobs');
    mkdirSync(blobs, { recursive: true });
    writeFileSync(join(blobs, sha256(stBytes) + '.incomplete'), stBytes.subarray(0, 1234));
    hub.log.length = 0;
    await resolveSource('gpt2', { cacheDir: cache2, hubUrl: hub.url });
    assert.equal(
      hub.log.filter((r) => r.path.startsWith('/cdn/')).map((r) => r.range),
      ['bytes=1234-'],
    );
    assert.equal(readFileSync(join(blobs, sha256(stBytes))), stBytes);
  } finally {
    await hub.close();
  }
});

test('a hash mismatch is a DownloadError and leaves nothing in the cache', async () => {
  const hub = await startHub();
  const cacheDir = freshCache();
  try {
    hub.fakeSha = 'f'.repeat(64);
    await rejectsWith(
      resolveSource('gpt2', { cacheDir, hubUrl: hub.url }),
      DownloadError,
      new RegExp(
        `model\\.safetensors: hash mismatch: the hub says f{64}, the downloaded ${stBytes.length} bytes hash to ${sha256(stBytes)}`,
      ),
    );
    const blobs = join(cacheDir, 'models--openai-community--gpt2', 'blobs');
    assert.not.ok(existsSync(join(blobs, 'f'.repeat(64))));
    assert.not.ok(existsSync(join(blobs, 'f'.repeat(64) + '.incomplete')));
  } finally {
    await hub.close();
  }
});

test('404s name the repo or file; unreachable hubs and missing local dirs are clear errors', async () => {
  const hub = await startHub();
  const cacheDir = freshCache();
  try {
    await rejectsWith(
      resolveSource('someone/nothing', { cacheDir, hubUrl: hub.url }),
      DownloadError,
      /^someone\/nothing\/config\.json: HTTP 404 from http:\/\/127\.0\.0\.1:\d+\/someone\/nothing\/resolve\/main\/config\.json: no such repo/,
    );
    await rejectsWith(
      resolveSource('gpt2', { cacheDir, hubUrl: hub.url, revision: 'v9' }),
      DownloadError,
      /HTTP 404 .*: no such revision/,
    );
    await rejectsWith(
      resolveSource('gpt2', { cacheDir: freshCache(), hubUrl: 'http://127.0.0.1:9' }),
      DownloadError,
      /cannot reach http:\/\/127\.0\.0\.1:9/,
    );
    await rejectsWith(
      resolveSource('gpt2', { cacheDir: freshCache(), offline: true }),
      DownloadError,
      /not in the cache .* offline mode is on/,
    );
    const notADir = join(freshCache(), 'a-file');
    writeFileSync(notADir, 'x');
    await rejectsWith(
      resolveSource('gpt2', { cacheDir: notADir, hubUrl: hub.url }),
      DownloadError,
      new RegExp(`cannot write to the Hugging Face cache ${notADir} \\(ENOTDIR.*point HF_HUB_CACHE`),
    );
    await rejectsWith(
      resolveSource('./no/such/dir', {}),
      WeightsFormatError,
      /\.\/no\/such\/dir: no such file or directory/,
    );
    const empty = freshCache();
    await rejectsWith(
      resolveSource(empty, {}),
      WeightsFormatError,
      new RegExp(`${empty}: no config\\.json in this directory`),
    );
  } finally {
    await hub.close();
  }
});

test('files Python downloaded under the short alias (models--gpt2) are reused without requests; local dirs and random: work', async () => {
  const cacheDir = freshCache();
  const snap = join(cacheDir, 'models--gpt2', 'snapshots', COMMIT);
  mkdirSync(snap, { recursive: true });
  mkdirSync(join(cacheDir, 'models--gpt2', 'refs'));
  writeFileSync(join(cacheDir, 'models--gpt2', 'refs', 'main'), COMMIT);
  writeFileSync(join(snap, 'config.json'), configBytes);
  writeFileSync(join(snap, 'model.safetensors'), stBytes);
  const ck = await resolveSource('gpt2', { cacheDir, hubUrl: 'http://127.0.0.1:9' }); // a dead hub: any request would fail
  assert.is(ck.config.n_embd, cfg.n_embd);
  const local = await resolveSource(snap);
  assert.equal(local.shape('h.1.attn.c_attn.weight'), [8, 24]);
  const viaFile = await resolveSource(join(snap, 'model.safetensors'));
  assert.is(viaFile.source, snap);
  const r = await resolveSource('random:distilgpt2', { seed: 3 });
  assert.is(r.config.n_layer, 6);
  const cfgFile = join(freshCache(), 'tiny.json');
  writeFileSync(cfgFile, JSON.stringify(cfg));
  assert.equal((await resolveSource(`random:${cfgFile}`)).config, cfg);
});

/** p, or a failure naming `what` after ms (a lock that is never taken over must not hang the suite). */
function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, rej) => {
      t = setTimeout(() => rej(new Error(`${what}: still waiting after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

const lockPath = (cacheDir: string) =>
  join(cacheDir, '.locks', 'models--openai-community--gpt2', `${sha256(stBytes)}.gpt2-webgpu.lock`);
const blobPath = (cacheDir: string) => join(cacheDir, 'models--openai-community--gpt2', 'blobs', sha256(stBytes));

/** Runs resolveSource in a separate Node process; resolves with its exit code and output. */
function childLoad(cacheDir: string, hubUrl: string): Promise<{ code: number; out: string }> {
  const mod = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'node-sources.js');
  const script = `const { resolveSource } = await import(${JSON.stringify(mod)});
    const ck = await resolveSource('gpt2', { cacheDir: ${JSON.stringify(cacheDir)}, hubUrl: ${JSON.stringify(hubUrl)} });
    console.log(ck.config.n_embd);`;
  return new Promise((res) => {
    const c = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('close', (code) => res({ code: code ?? -1, out }));
  });
}

test('the same model loaded twice at once (in one process, and from two processes) is downloaded once', async () => {
  const hub = await startHub();
  try {
    hub.slowMs = 40;
    const cacheDir = freshCache();
    const [a, b] = await Promise.all([
      resolveSource('gpt2', { cacheDir, hubUrl: hub.url }),
      resolveSource('gpt2', { cacheDir, hubUrl: hub.url }),
    ]);
    assert.equal([a.config.n_embd, b.config.n_embd], [cfg.n_embd, cfg.n_embd]);
    assert.is(cdnGets(hub).length, 1, 'one download');
    assert.equal(readFileSync(blobPath(cacheDir)), stBytes);
    assert.not.ok(existsSync(lockPath(cacheDir)), 'lock released');
    assert.equal(
      readdirSync(dirname(blobPath(cacheDir))).filter((f) => f.endsWith('.incomplete')),
      [],
    );

    hub.log.length = 0;
    const cache2 = freshCache();
    const runs = await Promise.all([childLoad(cache2, hub.url), childLoad(cache2, hub.url)]);
    for (const r of runs) assert.equal([r.code, r.out.trim()], [0, String(cfg.n_embd)], r.out);
    assert.is(cdnGets(hub).length, 1, 'one download across processes');
    assert.equal(readFileSync(blobPath(cache2)), stBytes);
    assert.not.ok(existsSync(lockPath(cache2)));
  } finally {
    await hub.close();
  }
});

test('download locks: a live holder is waited for (its progress reported), a dead or silent one is taken over', async () => {
  const hub = await startHub();
  try {
    // Held by this (live) process: the load waits, reports the holder's partial file, and once the
    // lock is gone continues from it.
    const cacheDir = freshCache();
    mkdirSync(dirname(lockPath(cacheDir)), { recursive: true });
    writeFileSync(lockPath(cacheDir), JSON.stringify({ pid: process.pid, host: hostname() }));
    mkdirSync(dirname(blobPath(cacheDir)), { recursive: true });
    writeFileSync(blobPath(cacheDir) + '.incomplete', stBytes.subarray(0, 1000));
    const progress: DownloadProgress[] = [];
    const loading = resolveSource('gpt2', { cacheDir, hubUrl: hub.url, onProgress: (p) => progress.push(p) });
    await new Promise((r) => setTimeout(r, 600));
    assert.is(cdnGets(hub).length, 0, 'no download while the lock is held');
    assert.ok(
      progress.some((p) => p.file === 'model.safetensors' && p.loadedBytes === 1000 && p.totalBytes === stBytes.length),
      JSON.stringify(progress),
    );
    rmSync(lockPath(cacheDir));
    await within(10_000, loading, 'released lock');
    assert.equal(
      cdnGets(hub).map((r) => r.range),
      ['bytes=1000-'],
    );
    assert.equal(readFileSync(blobPath(cacheDir)), stBytes);

    // Left by a process that has exited.
    const dead = await new Promise<number>((r) => {
      const c = spawn(process.execPath, ['-e', '0']);
      c.on('close', () => r(c.pid!));
    });
    const cache2 = freshCache();
    mkdirSync(dirname(lockPath(cache2)), { recursive: true });
    writeFileSync(lockPath(cache2), JSON.stringify({ pid: dead, host: hostname() }));
    await within(10_000, resolveSource('gpt2', { cacheDir: cache2, hubUrl: hub.url }), 'lock of a dead process');
    assert.equal(readFileSync(blobPath(cache2)), stBytes);
    assert.not.ok(existsSync(lockPath(cache2)));

    // Held from another machine (a shared cache) but not refreshed for 10 minutes; and one that
    // is not even JSON (a crash between creating and writing it), equally old.
    for (const body of [JSON.stringify({ pid: 1, host: 'elsewhere' }), '']) {
      const cache3 = freshCache();
      mkdirSync(dirname(lockPath(cache3)), { recursive: true });
      writeFileSync(lockPath(cache3), body);
      const old = new Date(Date.now() - 600_000);
      utimesSync(lockPath(cache3), old, old);
      await within(
        10_000,
        resolveSource('gpt2', { cacheDir: cache3, hubUrl: hub.url }),
        `old lock ${JSON.stringify(body)}`,
      );
      assert.equal(readFileSync(blobPath(cache3)), stBytes);
    }
  } finally {
    await hub.close();
  }
});

test.run();
