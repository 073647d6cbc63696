/**
 * urlSource against servers that lie about sizes or cut bodies (issue 28, item 11): announced sizes
 * past what can be held are refused before anything is allocated, nothing is allocated up front
 * from an untrusted Content-Length, and a cut body is a DownloadError with the bytes received.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, IncomingMessage, ServerResponse } from 'node:http';
import { AddressInfo } from 'node:net';
import { DownloadError } from '../src/errors.js';
import { MAX_WHOLE_FILE_BYTES, urlSource } from '../src/engine/sources-web.js';
import { MAX_CONFIG_BYTES } from '../src/engine/config.js';
import { makeSafetensors, rejectsWith, smallConfig } from './fixtures-util.js';

const cfg = smallConfig();

/** Serves /m/config.json (valid unless `config` answers) and /m/model.safetensors through `st`. */
async function serve(
  st: (req: IncomingMessage, res: ServerResponse) => void,
  config?: (req: IncomingMessage, res: ServerResponse) => void,
) {
  const server = createServer((req, res) => {
    if (req.url === '/m/config.json') {
      if (config) return config(req, res);
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(cfg));
    }
    if (req.url === '/m/model.safetensors') return st(req, res);
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/m`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** Announces `length` bytes (ignoring Range), sends `send` of them and cuts the connection. */
const liar = (length: number, send: number) => (_req: IncomingMessage, res: ServerResponse) => {
  res.writeHead(200, { 'content-length': length });
  res.write(Buffer.alloc(send, 1), () => setTimeout(() => res.socket?.destroy(), 20));
};

test('item 11: a Content-Length past what can be held is refused before reading; a cut body names the bytes', async () => {
  assert.ok(MAX_WHOLE_FILE_BYTES >= 6_431_829_964, 'the bound holds gpt2-xl in f32');
  const huge = await serve(liar(2 ** 40, 1000));
  try {
    await rejectsWith(
      urlSource(huge.url),
      DownloadError,
      new RegExp(
        `/m/model\\.safetensors: announces 1099511627776 bytes \\(Content-Length\\), more than the ${MAX_WHOLE_FILE_BYTES} bytes a whole-file download may hold in memory`,
      ),
    );
  } finally {
    await huge.close();
  }

  // 3 GB announced, 1000 sent: nothing near 3 GB is allocated, and the cut is named.
  const cut = await serve(liar(3_000_000_000, 1000));
  try {
    const before = process.memoryUsage().arrayBuffers;
    let peak = before;
    const probe = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers)), 1);
    try {
      await rejectsWith(
        urlSource(cut.url),
        DownloadError,
        /\/m\/model\.safetensors: connection cut after 1000 of 3000000000 bytes/,
      );
    } finally {
      clearInterval(probe);
    }
    peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    assert.ok(peak - before < 256 << 20, `held ${peak - before} bytes for a 1000-byte body`);
  } finally {
    await cut.close();
  }
});

test('item 11: bodies without a length are bounded too (maxBytes), and so is config.json', async () => {
  const { bytes } = await makeSafetensors(cfg);
  // Chunked (no Content-Length), no Range support.
  const chunked = await serve((_req, res) => {
    res.writeHead(200);
    res.end(bytes);
  });
  try {
    await rejectsWith(
      urlSource(chunked.url, { maxBytes: 1000 }),
      DownloadError,
      /model\.safetensors: the body passes 1000 bytes, the most a whole-file download may hold in memory \(maxBytes\)/,
    );
    const ck = await urlSource(chunked.url); // the same file within the default bound loads
    assert.equal(ck.shape('wte.weight'), [cfg.vocab_size, cfg.n_embd]);
  } finally {
    await chunked.close();
  }

  const bigConfig = await serve(
    (_req, res) => void res.writeHead(404).end(),
    (_req, res) => {
      res.writeHead(200, { 'content-length': MAX_CONFIG_BYTES + 1 });
      res.end(Buffer.alloc(MAX_CONFIG_BYTES + 1, 0x20));
    },
  );
  try {
    await rejectsWith(
      urlSource(bigConfig.url),
      DownloadError,
      new RegExp(
        `config\\.json: announces ${MAX_CONFIG_BYTES + 1} bytes \\(Content-Length\\), more than the ${MAX_CONFIG_BYTES} bytes a config\\.json may have`,
      ),
    );
  } finally {
    await bigConfig.close();
  }
});

test('a server that honours Range for the probe only: reads take their slice of the whole body', async () => {
  const { bytes, values } = await makeSafetensors(cfg);
  let n = 0;
  const s = await serve((req, res) => {
    if (n++ === 0 && req.headers.range === 'bytes=0-7')
      return void res
        .writeHead(206, { 'content-range': `bytes 0-7/${bytes.length}`, 'content-length': 8 })
        .end(bytes.subarray(0, 8));
    res.writeHead(200, { 'content-length': bytes.length }).end(bytes);
  });
  try {
    const ck = await urlSource(s.url);
    assert.equal(Array.from(await ck.read('ln_f.bias')), Array.from(values.get('ln_f.bias')!));
    assert.equal(
      Array.from(await ck.readRows('wte.weight', 5, 3)),
      Array.from(values.get('wte.weight')!.subarray(5 * 8, 8 * 8)),
    );
  } finally {
    await s.close();
  }
});

test.run();
