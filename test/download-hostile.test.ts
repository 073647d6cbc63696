/**
 * Hub downloads against hostile or broken servers on 127.0.0.1 (issue 28, items 6-10): bodies that
 * pass the announced size or stop short, drips and silent servers, revisions and etags that would
 * escape the cache, and redirects that would carry the token to another host. Every case is bounded
 * by small timeouts; a regression fails fast instead of hanging the suite.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { AddressInfo } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DownloadError, InvalidOptionError } from '../src/errors.js';
import { DownloadProgress, hubFile } from '../src/node-sources.js';
import { rejectsWith } from './fixtures-util.js';

const COMMIT = 'c'.repeat(39) + '7';
const REPO = 'someone/model';
const gitSha1 = (b: Uint8Array) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

interface Served {
  url: string;
  port: number;
  log: Array<{ method: string; path: string; auth?: string }>;
  close(): Promise<void>;
}

/** A server on 127.0.0.1 answering with `handle`; every request is logged (method, path, authorization). */
async function serve(handle: (req: IncomingMessage, res: ServerResponse, s: Served) => void): Promise<Served> {
  const s = { log: [] } as unknown as Served;
  const server: Server = createServer((req, res) => {
    s.log.push({ method: req.method!, path: req.url!, auth: req.headers.authorization });
    handle(req, res, s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  s.port = (server.address() as AddressInfo).port;
  s.url = `http://127.0.0.1:${s.port}`;
  s.close = () =>
    new Promise((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return s;
}

/** The headers the hub's resolve endpoint sends for a small (non-LFS) file. */
const fileHeaders = (size: number, etag: string) => ({
  'x-repo-commit': COMMIT,
  etag: `"${etag}"`,
  'content-length': size,
});

const made: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'gpt2-hostile-'));
  made.push(d);
  return d;
};
test.after(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

/** p, or a failure naming `what` after ms. */
function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, rej) => {
      t = setTimeout(() => rej(new Error(`${what}: still running after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

const incompleteFiles = (cacheDir: string) => {
  const blobs = join(cacheDir, 'models--someone--model', 'blobs');
  return existsSync(blobs) ? readdirSync(blobs) : [];
};

test('item 6: a body that runs past the announced size is cut as soon as it passes it (no disk fill)', async () => {
  // HEAD announces 829 bytes; the GET streams 64 KiB chunks (up to 32 MiB, so a regression ends too).
  let sent = 0;
  const hub = await serve((req, res) => {
    if (req.method === 'HEAD') return void res.writeHead(200, fileHeaders(829, '1'.repeat(40))).end();
    res.writeHead(200, { 'x-repo-commit': COMMIT }); // chunked: no length of its own
    const piece = Buffer.alloc(65536, 0x61);
    const more = () => {
      while (!res.destroyed && sent < 32 << 20) {
        sent += piece.length;
        if (!res.write(piece)) return void res.once('drain', more);
      }
      res.end();
    };
    more();
  });
  const cacheDir = tmp();
  try {
    const seen: DownloadProgress[] = [];
    await within(
      5000,
      rejectsWith(
        hubFile(REPO, 'config.json', { cacheDir, hubUrl: hub.url, attempts: 1, onProgress: (p) => seen.push(p) }),
        DownloadError,
        /config\.json: the server sent more than the 829 bytes announced/,
      ),
      'an endless body',
    );
    const most = Math.max(...seen.map((p) => p.loadedBytes));
    assert.ok(most <= 829, `wrote ${most} bytes of an 829-byte file`);
    assert.ok(sent < 16 << 20, `the server got to send ${sent} bytes`);
    assert.equal(incompleteFiles(cacheDir), [], 'the partial file is removed');
  } finally {
    await hub.close();
  }
});

test('item 7: a drip (and a silent server) hit the idle timeout; the error names the file and the bytes', async () => {
  // One byte every 40 ms of an announced 829.
  const timers = new Set<NodeJS.Timeout>();
  const hub = await serve((req, res) => {
    if (req.url!.includes('silent')) return; // never answers
    res.writeHead(200, fileHeaders(829, '2'.repeat(40)));
    if (req.method === 'HEAD') return void res.end();
    const t = setInterval(() => (res.destroyed ? clearInterval(t) : res.write('x')), 40);
    timers.add(t);
  });
  const cacheDir = tmp();
  try {
    const t0 = Date.now();
    await within(
      4000,
      rejectsWith(
        hubFile(REPO, 'config.json', { cacheDir, hubUrl: hub.url, attempts: 2, idleTimeoutMs: 300 }),
        DownloadError,
        /^config\.json: download incomplete after 2 attempts \(\d+ of 829 bytes; .*under 1024 bytes in 0\.3 s/,
      ),
      'a drip',
    );
    assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);

    // The same through HF_HUB_DOWNLOAD_TIMEOUT (seconds, as Python's huggingface_hub reads it).
    process.env.HF_HUB_DOWNLOAD_TIMEOUT = '0.25';
    try {
      await within(
        3000,
        rejectsWith(
          hubFile(REPO, 'config.json', { cacheDir: tmp(), hubUrl: hub.url, attempts: 1 }),
          DownloadError,
          /under 1024 bytes in 0\.25 s/,
        ),
        'a drip, timeout from the environment',
      );
      process.env.HF_HUB_DOWNLOAD_TIMEOUT = 'soon';
      await rejectsWith(
        hubFile(REPO, 'config.json', { cacheDir: tmp(), hubUrl: hub.url }),
        InvalidOptionError,
        /HF_HUB_DOWNLOAD_TIMEOUT "soon" is not a number of seconds > 0/,
      );
    } finally {
      delete process.env.HF_HUB_DOWNLOAD_TIMEOUT;
    }
    await rejectsWith(
      hubFile(REPO, 'config.json', { cacheDir: tmp(), hubUrl: hub.url, idleTimeoutMs: -5 }),
      InvalidOptionError,
      /idleTimeoutMs must be a number > 0, got -5/,
    );

    // A hub that accepts the connection and never answers the HEAD.
    await within(
      3000,
      rejectsWith(
        hubFile('silent/model', 'config.json', { cacheDir: tmp(), hubUrl: hub.url, idleTimeoutMs: 300 }),
        DownloadError,
        /^silent\/model\/config\.json: no answer from http:\/\/127\.0\.0\.1:\d+ within 0\.3 s/,
      ),
      'a silent hub',
    );
  } finally {
    for (const t of timers) clearInterval(t);
    await hub.close();
  }
});

test('item 8: a body shorter than announced is a DownloadError with both sizes', async () => {
  const body = Buffer.alloc(500, 0x62);
  const hub = await serve((req, res) => {
    if (req.method === 'HEAD') return void res.writeHead(200, fileHeaders(829, gitSha1(body))).end();
    res.writeHead(200, { 'content-length': body.length }).end(body); // ignores Range, ends short
  });
  const cacheDir = tmp();
  try {
    await within(
      3000,
      rejectsWith(
        hubFile(REPO, 'config.json', { cacheDir, hubUrl: hub.url, attempts: 2 }),
        DownloadError,
        /^config\.json: download incomplete after 2 attempts \(500 of 829 bytes; the body ended after 500 of 829 bytes\)/,
      ),
      'a short body',
    );
  } finally {
    await hub.close();
  }
});

test('item 9: revisions that are not git ref names or commits are refused before any request or write', async () => {
  const body = Buffer.from('{}');
  const hub = await serve((req, res) => {
    res.writeHead(200, fileHeaders(body.length, gitSha1(body)));
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  const root = tmp();
  const cacheDir = join(root, 'cache');
  mkdirSync(cacheDir);
  try {
    const bad = [
      '../../../escaped',
      '..',
      'a/../b',
      '/abs',
      '-rf',
      'a\\b',
      'a\u0001b',
      'a b',
      '',
      'x.lock',
      'a//b',
      'a/',
      'a.',
      '.hidden',
      'a/.b',
      '@',
      'a@{1}',
      'a~1',
      'a^',
      'a:b',
      'a?',
      'a*',
      'a[',
      'x'.repeat(300),
    ];
    for (const revision of bad) {
      await rejectsWith(
        hubFile(REPO, 'config.json', { cacheDir, hubUrl: hub.url, revision }),
        InvalidOptionError,
        /^revision ".* is not a branch, tag or commit name/,
      );
    }
    assert.equal(hub.log, [], 'no request for a bad revision');
    assert.equal(readdirSync(root).sort(), ['cache'], 'nothing written next to the cache');
    assert.equal(readdirSync(cacheDir), [], 'nothing written in it');
    // Good names pass (offline: the refusal is then about the cache, not the name).
    for (const revision of ['main', 'v1.0', 'refs/pr/1', 'release-2024_01', COMMIT]) {
      await rejectsWith(
        hubFile(REPO, 'config.json', { cacheDir, revision, offline: true }),
        DownloadError,
        /is not in the cache/,
      );
    }
    // A nested ref name (the hub's pull-request refs) is written under refs/ as a path.
    const prCache = tmp();
    await hubFile(REPO, 'config.json', { cacheDir: prCache, hubUrl: hub.url, revision: 'refs/pr/1' });
    assert.is(readFileSync(join(prCache, 'models--someone--model', 'refs', 'refs', 'pr', '1'), 'utf8'), COMMIT);
    // A long value is quoted shortened.
    const e = await rejectsWith(
      hubFile(REPO, 'config.json', { cacheDir, hubUrl: hub.url, revision: 'x'.repeat(300) + '..' }),
      InvalidOptionError,
      /revision/,
    );
    assert.ok(e.message.length < 400, e.message);
  } finally {
    await hub.close();
  }
});

test('item 9: etags that are not sha256 / git sha1 hashes are refused, never used as paths or unchecked', async () => {
  let etag = '';
  const body = Buffer.from('{"n": 1}');
  const hub = await serve((req, res) => {
    res.writeHead(200, { 'x-repo-commit': COMMIT, etag, 'content-length': body.length });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  try {
    for (const e of ['".."', '"."', '"not-a-hash"', `"${'g'.repeat(40)}"`, `"${'a'.repeat(63)}"`]) {
      etag = e;
      const cacheDir = tmp();
      await rejectsWith(
        hubFile(REPO, 'config.json', { cacheDir, hubUrl: hub.url }),
        DownloadError,
        /^someone\/model\/config\.json: the hub's etag ".*" is not a sha256 or git sha1 hash/,
      );
      assert.equal(incompleteFiles(cacheDir), [], `nothing downloaded for etag ${e}`);
    }
    // Upper-case hex is the same hash.
    etag = `"${gitSha1(body).toUpperCase()}"`;
    const ok = await hubFile(REPO, 'config.json', { cacheDir: tmp(), hubUrl: hub.url });
    assert.ok(ok.endsWith(join(COMMIT, 'config.json')));
  } finally {
    await hub.close();
  }
});

test('item 10: the token is never sent to another origin (scheme-relative redirects included)', async () => {
  const body = Buffer.from('{"n": 2}');
  const other = await serve((req, res) => {
    res.writeHead(200, fileHeaders(body.length, gitSha1(body)));
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  const hub = await serve((req, res) => {
    // Same-origin relative redirect (a renamed repo) is followed; a scheme-relative one leads elsewhere.
    if (req.url!.startsWith('/old/model/')) {
      res.writeHead(307, { location: req.url!.replace('/old/model/', `/${REPO}/`) }).end();
    } else if (req.url!.startsWith('/cdn/') && req.method === 'GET') {
      // The file itself on another host (as huggingface.co's LFS CDN): fetch drops the token there.
      res.writeHead(302, { location: `http://localhost:${other.port}/${REPO}/resolve/main/config.json` }).end();
    } else if (req.url!.startsWith('/evil/')) {
      res.writeHead(307, { location: `//localhost:${other.port}/${REPO}/resolve/main/config.json` }).end();
    } else if (req.url!.startsWith('/evil2/')) {
      res.writeHead(307, { location: `/\\localhost:${other.port}/${REPO}/resolve/main/config.json` }).end();
    } else {
      res.writeHead(200, fileHeaders(body.length, gitSha1(body)));
      res.end(req.method === 'HEAD' ? undefined : body);
    }
  });
  try {
    for (const repo of ['evil/model', 'evil2/model'])
      await rejectsWith(
        hubFile(repo, 'config.json', { cacheDir: tmp(), hubUrl: hub.url, token: 'hf_secret' }),
        DownloadError,
        /lacks x-repo-commit/,
      );
    assert.equal(
      other.log.filter((r) => r.auth !== undefined),
      [],
      'no request with the token reached the other origin',
    );
    const path = await hubFile('old/model', 'config.json', { cacheDir: tmp(), hubUrl: hub.url, token: 'hf_secret' });
    assert.ok(path.endsWith('config.json'));
    assert.ok(hub.log.some((r) => r.path === `/${REPO}/resolve/main/config.json` && r.auth === 'Bearer hf_secret'));
    await hubFile('cdn/model', 'config.json', { cacheDir: tmp(), hubUrl: hub.url, token: 'hf_secret' });
    assert.ok(
      other.log.some((r) => r.method === 'GET'),
      'the other host served the file',
    );
    assert.equal(
      other.log.filter((r) => r.auth !== undefined),
      [],
      'nor with the download of a file served from another host',
    );
  } finally {
    await hub.close();
    await other.close();
  }
});

test.run();
