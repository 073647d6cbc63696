// Closed-loop load on `gpt2-webgpu serve`: starts the server (a child process, on 127.0.0.1 and a
// free port), then for each client count C runs C clients that each send their next
// /v1/completions request as soon as the last one answered, for one warm-up round (C requests, not
// counted: plans for the new batch shapes) and then `--rounds` x C requests (or until its time is up). Every request: a distinct short prompt, `--max-tokens` new tokens
// (ignore_eos, so every answer has them all), temperature 0.8 with its own seed. Reports
// requests/s, tokens/s, p50/p99 latency and the speed-up in tokens/s over one client (one request
// at a time), with the load average before and after each level (the machine may be shared).
//   node bench/serve-load.mjs [--model random:distilgpt2] [--clients 1,4,16,64] [--rounds 3]
//        [--max-tokens 32] [--max-batch 64] [--context 256] [--max-seconds 120] [--f16] [--json]
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { bool, flags, int, ints, parseOrExit, str } from './flags.mjs';

const USAGE =
  'usage: node bench/serve-load.mjs [--model M] [--clients 1,4,16,64] [--rounds R] [--max-tokens T] [--max-batch B] [--context C] [--max-seconds S] [--f16] [--json]';

function parse(argv) {
  const f = flags(argv, {
    model: str('random:distilgpt2'),
    clients: str('1,4,16,64'),
    rounds: str('3'), // measured requests per level: rounds x clients, at least 4
    'max-tokens': str('32'),
    'max-batch': str('64'),
    context: str('256'),
    'max-seconds': str('120'),
    f16: bool,
    json: bool,
  });
  return {
    model: f.model,
    clients: ints('--clients', f.clients, 1, 256),
    rounds: int('--rounds', f.rounds, 1, 100),
    maxTokens: int('--max-tokens', f['max-tokens'], 1, 1000),
    maxBatch: int('--max-batch', f['max-batch'], 1, 256),
    context: int('--context', f.context, 16, 1024),
    maxSeconds: int('--max-seconds', f['max-seconds'], 1, 3600),
    f16: f.f16,
    json: f.json,
  };
}

/** Starts the server; resolves with its base URL and the child process once it listens. */
function startServer(o) {
  const bin = fileURLToPath(new URL('../bin/gpt2-webgpu.js', import.meta.url));
  const args = ['serve', '--model', o.model, '--port', '0', '--max-batch', String(o.maxBatch)];
  args.push('--max-queue', '1024', '--context', String(o.context));
  if (o.f16) args.push('--f16');
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'inherit', 'pipe'] });
  return new Promise((resolve, reject) => {
    let log = '';
    child.stderr.on('data', (d) => {
      log += d;
      const m = /at (http:\/\/[^\s]+)\/v1/.exec(log);
      if (m) resolve({ base: m[1], child });
    });
    child.on('exit', (code) => reject(new Error(`server exited (${code}) before listening:\n${log}`)));
  });
}

async function complete(base, i, maxTokens) {
  const t0 = performance.now();
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      prompt: `Request ${i}: the quick brown fox jumps over`,
      max_tokens: maxTokens,
      temperature: 0.8,
      seed: i,
      ignore_eos: true,
    }),
  });
  const body = await res.json();
  if (res.status !== 200) throw new Error(`request ${i}: ${res.status} ${JSON.stringify(body)}`);
  return { ms: performance.now() - t0, tokens: body.usage.completion_tokens };
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/** C clients in a closed loop until `total` requests were sent (or the deadline passed). */
async function loop(base, clients, total, first, maxTokens, deadline, lat) {
  let next = 0;
  let tokens = 0;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < total && performance.now() < deadline) {
        const r = await complete(base, first + next++, maxTokens);
        lat?.push(r.ms);
        tokens += r.tokens;
      }
    }),
  );
  return { sent: next, tokens };
}

async function level(base, clients, o, first) {
  const total = Math.max(4, o.rounds * clients);
  const warm = await loop(base, clients, clients, first, o.maxTokens, Infinity);
  first += warm.sent;
  const load0 = loadavg()[0];
  const lat = [];
  const t0 = performance.now();
  const { tokens } = await loop(base, clients, total, first, o.maxTokens, t0 + o.maxSeconds * 1000, lat);
  const s = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return {
    clients,
    requests: lat.length,
    warmup_requests: warm.sent,
    seconds: s,
    requests_per_s: lat.length / s,
    tokens_per_s: tokens / s,
    p50_ms: pct(lat, 50),
    p99_ms: pct(lat, 99),
    load_before: load0,
    load_after: loadavg()[0],
  };
}

const o = parseOrExit('bench/serve-load.mjs', USAGE, () => parse(process.argv.slice(2)));
const { base, child } = await startServer(o);
try {
  const rows = [];
  let first = 0;
  for (const c of o.clients) {
    const r = await level(base, c, o, first);
    first += r.requests + r.warmup_requests;
    rows.push(r);
    if (!o.json) process.stderr.write(`${c} clients: ${r.tokens_per_s.toFixed(1)} tokens/s\n`);
  }
  const one = rows.find((r) => r.clients === 1)?.tokens_per_s;
  for (const r of rows) r.speedup_vs_1_client = one ? r.tokens_per_s / one : null;
  const meta = {
    model: o.model,
    max_tokens: o.maxTokens,
    max_batch: o.maxBatch,
    context: o.context,
    date: new Date().toISOString(),
  };
  if (o.json) console.log(JSON.stringify({ ...meta, levels: rows }));
  else {
    console.log(`${o.model}, ${o.maxTokens} new tokens per request, max batch ${o.maxBatch}, ${meta.date}`);
    console.log('clients  requests  req/s   tokens/s  p50 ms   p99 ms   speed-up  load avg');
    for (const r of rows)
      console.log(
        `${String(r.clients).padStart(7)}  ${String(r.requests).padStart(8)}  ${r.requests_per_s.toFixed(2).padStart(5)}  ${r.tokens_per_s.toFixed(1).padStart(8)}  ${r.p50_ms.toFixed(0).padStart(7)}  ${r.p99_ms.toFixed(0).padStart(7)}  ${(r.speedup_vs_1_client ?? 0).toFixed(2).padStart(8)}  ${r.load_before.toFixed(2)} -> ${r.load_after.toFixed(2)}`,
      );
  }
} finally {
  child.kill('SIGINT');
}
