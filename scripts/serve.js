// A small static file server for the browser example and the browser test.
//
// Serves the repository root on 127.0.0.1 (so /examples/browser/, /dist/browser/... work as-is)
// and mounts model folders under /fixtures/ (default: <repoRoot>/../shared/fixtures, or the folder
// in env GPT2_FIXTURES, or `--mount /fixtures/=<dir>`). GET and HEAD, HTTP Range requests (one
// range, 206 / 416), MIME types for what the example loads, no directory listings, no dot-files
// (.git), nothing outside the served folders.
//
// Usage: node scripts/serve.js [port] [--host 127.0.0.1] [--mount /prefix/=<dir>]...
//   port from argv, else env PORT, else 8080; port 0 picks a free one. Prints "serving <url>".
// Also importable: `const { url, close } = await serve({ port: 0 })`.
import { createServer } from 'node:http';
import { createReadStream, existsSync, promises as fsp } from 'node:fs';
import { dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wgsl': 'text/wgsl; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.wasm': 'application/wasm',
  '.safetensors': 'application/octet-stream',
  '.bin': 'application/octet-stream',
};

/** The default mounts: the repo root at "/" and a fixtures folder at "/fixtures/" when one exists. */
export function defaultMounts() {
  const mounts = [];
  const fixtures =
    process.env.GPT2_FIXTURES ||
    [join(repoRoot, 'fixtures'), join(repoRoot, '..', 'shared', 'fixtures')].find((d) => existsSync(d));
  if (fixtures) mounts.push({ prefix: '/fixtures/', dir: resolve(fixtures) });
  mounts.push({ prefix: '/', dir: repoRoot });
  return mounts;
}

/**
 * Parses a Range header against a file of `size` bytes. Returns null when absent or not a plain
 * single byte range (then the whole file is sent, as RFC 9110 allows), 'unsatisfiable', or
 * { start, end } (inclusive).
 */
export function parseRange(header, size) {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null;
  let start;
  let end;
  if (m[1] === '') {
    // Suffix range: the last N bytes.
    const n = Number(m[2]);
    if (n === 0) return 'unsatisfiable';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return null; // malformed: ignore the header
  }
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

/** Maps a URL path to a file under one of the mounts, or null (also for any escape attempt). */
function locate(mounts, urlPath) {
  let path;
  try {
    path = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  // No NUL bytes and no dot-segments (.git, .gpu, and any ../ left after decoding).
  if (path.includes('\0') || path.split('/').some((seg) => seg.startsWith('.'))) return null;
  for (const { prefix, dir } of mounts) {
    if (!path.startsWith(prefix)) continue;
    const file = resolve(dir, '.' + path.slice(prefix.length - 1));
    if (file !== dir && !file.startsWith(dir + sep)) return null;
    return file;
  }
  return null;
}

function send(res, status, text, extra = {}) {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...extra,
  });
  res.end(text);
}

async function handle(mounts, req, res) {
  if (req.method !== 'GET' && req.method !== 'HEAD')
    return send(res, 405, 'method not allowed\n', { Allow: 'GET, HEAD' });
  const url = new URL(req.url ?? '/', 'http://localhost');
  let file = locate(mounts, url.pathname);
  if (!file) return send(res, 404, 'not found\n');
  let st;
  try {
    st = await fsp.stat(file);
    if (st.isDirectory()) {
      // Relative URLs in an index page need the trailing slash.
      if (!url.pathname.endsWith('/')) return send(res, 301, 'moved\n', { Location: url.pathname + '/' + url.search });
      file = join(file, 'index.html');
      st = await fsp.stat(file);
    }
  } catch {
    return send(res, 404, 'not found\n');
  }
  if (!st.isFile()) return send(res, 404, 'not found\n');

  const size = st.size;
  const headers = {
    'Content-Type': MIME[extname(file).toLowerCase()] ?? 'application/octet-stream',
    'Accept-Ranges': 'bytes',
    'Last-Modified': st.mtime.toUTCString(),
    ETag: `"${size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`,
    // Always revalidate: the example's bundle changes between builds.
    'Cache-Control': 'no-cache',
  };
  if (req.headers['if-none-match'] === headers.ETag) {
    res.writeHead(304, headers);
    return res.end();
  }
  // If-Range with a stale validator means "send everything".
  const ifRange = req.headers['if-range'];
  const range = !ifRange || ifRange === headers.ETag ? parseRange(req.headers.range, size) : null;
  if (range === 'unsatisfiable')
    return send(res, 416, 'range not satisfiable\n', { 'Content-Range': `bytes */${size}` });
  let status = 200;
  let start = 0;
  let end = size - 1;
  if (range) {
    status = 206;
    ({ start, end } = range);
    headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
  }
  headers['Content-Length'] = size === 0 ? 0 : end - start + 1;
  res.writeHead(status, headers);
  if (req.method === 'HEAD' || size === 0) return res.end();
  const stream = createReadStream(file, { start, end });
  stream.on('error', () => res.destroy());
  stream.pipe(res);
}

/**
 * Starts the server. Resolves with { url, port, server, close() } once it listens.
 * `mounts`: [{ prefix: '/x/', dir }] tried in order; defaults to defaultMounts().
 */
export function serve({ port = 8080, host = '127.0.0.1', mounts = defaultMounts(), log = false } = {}) {
  const server = createServer((req, res) => {
    handle(mounts, req, res).catch((e) => {
      if (!res.headersSent) send(res, 500, `internal error: ${e.message}\n`);
      else res.destroy();
    });
    if (log) res.on('finish', () => console.log(`${res.statusCode} ${req.method} ${req.url}`));
  });
  return new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const actual = server.address().port;
      resolvePromise({
        url: `http://${host}:${actual}`,
        port: actual,
        server,
        close: () =>
          new Promise((r) => {
            server.closeAllConnections?.();
            server.close(() => r());
          }),
      });
    });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const args = process.argv.slice(2);
  let port = Number(process.env.PORT ?? 8080);
  let host = '127.0.0.1';
  const extra = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--host') host = args[++i];
    else if (a === '--mount') {
      const [prefix, dir] = args[++i].split('=');
      extra.push({ prefix: prefix.endsWith('/') ? prefix : prefix + '/', dir: resolve(dir) });
    } else if (/^\d+$/.test(a)) port = Number(a);
    else {
      console.error(
        `serve.js: unknown argument "${a}". Usage: node scripts/serve.js [port] [--host H] [--mount /prefix/=dir]`,
      );
      process.exit(2);
    }
  }
  const { url } = await serve({
    port,
    host,
    mounts: [...extra, ...defaultMounts()],
    log: process.env.SERVE_LOG === '1',
  });
  console.log(`serving ${repoRoot} at ${url}/`);
  console.log(`example: ${url}/examples/browser/`);
}
