/**
 * The OpenAI-compatible server (src/server), on 127.0.0.1 with an ephemeral port, driven by the
 * official `openai` client (and fetch for raw SSE, disconnects and malformed bodies). Every
 * answer is checked against the engine called directly: model.generate for texts and seeds,
 * model.score for logprobs.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import OpenAI from 'openai';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { engine } from './model-util.js';
import { fixturesDir, REPO_ROOT, tinyDir } from './fixtures-util.js';
import type { Model } from '../src/engine/engine.js';
import { buildApp, type ServerApp, type ServerOptions } from '../src/server/app.js';
import { CHAT_STOP, chatPrompt } from '../src/server/chat.js';
import { deriveSeed } from '../src/sampling/options.js';

interface Running {
  server: ServerApp;
  base: string;
  client: OpenAI;
}
const started: Running[] = [];
async function start(model: Model, opts: ServerOptions = {}): Promise<Running> {
  const server = await buildApp(model, { modelName: 'gpt2-test', ...opts });
  const base = await server.app.listen({ host: '127.0.0.1', port: 0 });
  const r = { server, base, client: new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 }) };
  started.push(r);
  return r;
}

let tiny: Model;
let main: Running;
test.before(async () => {
  tiny = await (await engine()).loadModel(tinyDir());
  main = await start(tiny, { maxBatch: 8, maxQueue: 64, bodyLimit: 256 * 1024 });
});
test.after(async () => {
  for (const r of started) await r.server.close();
  (await engine()).destroy();
});

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
async function post(base: string, path: string, body: unknown, raw = false) {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: raw ? (body as string) : JSON.stringify(body),
  });
  const text = await res.text();
  return {
    status: res.status,
    headers: res.headers,
    text,
    json: (text.startsWith('{') ? JSON.parse(text) : {}) as Json,
  };
}
/** Extension fields (top_k, ignore_eos...) and loose bodies through the typed client. */
const loose = <T>(x: Json): T => x as T;
const greedy = (prompt: string | number[], maxNewTokens: number) =>
  tiny.generate(prompt, { temperature: 0, maxNewTokens }).then((r) => r.sequences[0]!);
const PROMPT = 'The meaning of life is';

test('completions: greedy text and finish reason as model.generate, usage, /v1/models, /health', async () => {
  const r = await main.client.completions.create({
    model: 'whatever',
    prompt: PROMPT,
    max_tokens: 8,
    temperature: 0,
    user: 'ignored',
  });
  const ref = await tiny.generate(PROMPT, { temperature: 0, maxNewTokens: 8 });
  const seq = ref.sequences[0]!;
  assert.is(r.object, 'text_completion');
  assert.is(r.model, 'gpt2-test');
  assert.is(r.choices[0]!.text, seq.text);
  assert.is(r.choices[0]!.finish_reason, seq.finishReason === 'length' ? 'length' : 'stop');
  assert.equal(r.usage, {
    prompt_tokens: ref.promptIds.length,
    completion_tokens: seq.tokens.length,
    total_tokens: ref.promptIds.length + seq.tokens.length,
  });
  const models = await main.client.models.list();
  assert.equal(
    models.data.map((m) => m.id),
    ['gpt2-test'],
  );
  const health = (await (await fetch(`${main.base}/health`)).json()) as Json;
  assert.is(health.status, 'ok');
  assert.is(health.max_batch, 8);
});

test('prompt forms: strings, token ids, arrays of either, max_tokens 0; choice i is prompt i', async () => {
  const prompts: Array<string | number[]> = ['Hello there', [464, 3290, 318], 'A', [50256]];
  const refs = await Promise.all(prompts.map((p) => greedy(p, 5)));
  const forms: Array<[unknown, number[]]> = [
    [prompts.slice(0, 1).concat(prompts.slice(2, 3)), [0, 2]],
    [prompts[1], [1]],
    [
      [prompts[1], prompts[3]],
      [1, 3],
    ],
  ];
  for (const [prompt, which] of forms) {
    const r = await main.client.completions.create(loose({ model: 'm', prompt, max_tokens: 5, temperature: 0 }));
    assert.equal(
      r.choices.map((c) => [c.index, c.text]),
      which.map((k, i) => [i, refs[k]!.text]),
      JSON.stringify(prompt),
    );
  }
  const zero = await main.client.completions.create({ model: 'm', prompt: 'Hi', max_tokens: 0 });
  assert.equal(
    [zero.choices[0]!.text, zero.choices[0]!.finish_reason, zero.usage?.completion_tokens],
    ['', 'length', 0],
  );
});

test('n > 1 and seed: choice j equals sequence j of model.generate({ numSequences, seed }); the same seed, the same text', async () => {
  const req = {
    model: 'm',
    prompt: 'Once upon a time',
    n: 3,
    seed: 11,
    max_tokens: 6,
    temperature: 0.9,
    top_p: 0.95,
    top_k: 40,
    presence_penalty: 0.5,
    frequency_penalty: 0.3,
    repetition_penalty: 1.1,
    min_p: 0.01,
  };
  const a = await main.client.completions.create(loose(req));
  const b = await main.client.completions.create(loose(req));
  const ref = await tiny.generate('Once upon a time', {
    numSequences: 3,
    seed: 11,
    maxNewTokens: 6,
    temperature: 0.9,
    topP: 0.95,
    topK: 40,
    presencePenalty: 0.5,
    freqPenalty: 0.3,
    repetitionPenalty: 1.1,
    minP: 0.01,
  });
  assert.equal(
    a.choices.map((c) => c.text),
    ref.sequences.map((s) => s.text),
  );
  assert.equal(
    b.choices.map((c) => c.text),
    ref.sequences.map((s) => s.text),
  );
  const other = await main.client.completions.create(loose({ ...req, seed: 12 }));
  assert.not.equal(
    other.choices.map((c) => c.text),
    ref.sequences.map((s) => s.text),
  );
});

test('logit_bias (keys are token ids) and stop strings: the text ends before the stop string, streamed or not', async () => {
  const biased = await main.client.completions.create({
    model: 'm',
    prompt: 'x',
    max_tokens: 3,
    temperature: 0,
    logit_bias: { '1000': 100 },
  });
  assert.is(biased.choices[0]!.text, tiny.tokenizer.decode([1000, 1000, 1000]));
  const full = (await greedy(PROMPT, 16)).text;
  const stop = full.slice(10, 13);
  const expected = full.slice(0, full.indexOf(stop));
  const r = await main.client.completions.create({ model: 'm', prompt: PROMPT, max_tokens: 16, temperature: 0, stop });
  assert.equal([r.choices[0]!.text, r.choices[0]!.finish_reason], [expected, 'stop']);
  const s = await main.client.completions.create({
    model: 'm',
    prompt: PROMPT,
    max_tokens: 16,
    temperature: 0,
    stop: ['zzzz', stop],
    stream: true,
  });
  let streamed = '';
  for await (const c of s) streamed += c.choices[0]?.text ?? '';
  assert.is(streamed, expected);
});

test('streaming: chunks add up to the non-streamed choices, finish reasons, usage chunk, data: [DONE]', async () => {
  const req = { model: 'm', prompt: ['Tell me', 'Why'], n: 2, seed: 5, max_tokens: 7, echo: true };
  const whole = await main.client.completions.create(req);
  const stream = await main.client.completions.create({
    ...req,
    stream: true,
    stream_options: { include_usage: true },
  });
  const texts = ['', '', '', ''];
  const finish: Array<string | null> = [null, null, null, null];
  let usage: unknown;
  for await (const c of stream) {
    for (const ch of c.choices) {
      texts[ch.index] += ch.text;
      if (ch.finish_reason) finish[ch.index] = ch.finish_reason;
    }
    if (c.usage) usage = c.usage;
  }
  assert.equal(
    texts,
    whole.choices.map((c) => c.text),
  );
  assert.ok(texts[0]!.startsWith('Tell me') && texts[2]!.startsWith('Why'), 'echo');
  assert.equal(
    finish,
    whole.choices.map((c) => c.finish_reason),
  );
  assert.equal(usage, whole.usage);
  const raw = await post(main.base, '/v1/completions', { prompt: 'Hi', max_tokens: 3, stream: true });
  assert.is(raw.status, 200);
  assert.match(raw.headers.get('content-type') ?? '', /text\/event-stream/);
  const events = raw.text.split('\n\n').filter(Boolean);
  assert.ok(events.every((e) => e.startsWith('data: ')));
  assert.is(events.at(-1), 'data: [DONE]');
  assert.ok(raw.text.endsWith('data: [DONE]\n\n'));
});

test('logprobs (trained model): echo + max_tokens 0 equals model.score; generated tokens scored over prompt + completion; the lm-eval request', async () => {
  const trained = await (await engine()).loadModel(join(fixturesDir(), 'trained-gpt2-fortunes'));
  const t = await start(trained, { maxBatch: 2 });
  const text = 'The meaning of life is to find your gift. The purpose of life is to give it away.';
  const ids = trained.tokenizer.encode(text);
  const dec = (id: number) => trained.tokenizer.decode([id]);
  const sc = await trained.score(ids, { top: 5 });
  const r = await t.client.completions.create({ model: 'm', prompt: text, max_tokens: 0, echo: true, logprobs: 5 });
  const lp = r.choices[0]!.logprobs!;
  assert.is(r.choices[0]!.text, text);
  assert.equal(lp.tokens, ids.map(dec));
  assert.is(lp.token_logprobs![0], null);
  assert.is(lp.top_logprobs![0], null);
  let offset = 0;
  ids.forEach((id, k) => {
    assert.is(lp.text_offset![k], offset);
    offset += dec(id).length;
    if (k === 0) return;
    const want = sc.tokens[k - 1]!;
    assert.ok(Math.abs(lp.token_logprobs![k]! - want.logprob) < 1e-5, `token ${k}`);
    const top = lp.top_logprobs![k]!;
    for (const alt of want.top!) assert.ok(Math.abs(top[dec(alt.id)]! - alt.logprob) < 1e-5, `top of ${k}`);
    assert.ok(Math.abs(top[dec(id)]! - want.logprob) < 1e-5, 'the token itself is in top_logprobs');
  });
  // lm-evaluation-harness's loglikelihood request: ids, max_tokens 1, greedy, logprobs 1, echo.
  const ctx = ids.slice(0, 8);
  const lm = await post(t.base, '/v1/completions', {
    model: 'gpt2',
    prompt: [ctx],
    temperature: 0,
    max_tokens: 1,
    logprobs: 1,
    seed: 1234,
    echo: true,
  });
  const l = lm.json.choices[0].logprobs;
  assert.is(l.token_logprobs.length, ctx.length + 1);
  const next = (await trained.generate(ctx, { temperature: 0, maxNewTokens: 1 })).sequences[0]!.tokens[0]!;
  let off = 0;
  [...ctx, next].forEach((id, k) => {
    assert.is(l.text_offset[k], off, `echo: text_offset ${k}`);
    off += dec(id).length;
  });
  const sc2 = await trained.score([...ctx, next], { top: 1 });
  sc2.tokens.forEach((tk, k) => assert.ok(Math.abs(l.token_logprobs[k + 1] - tk.logprob) < 1e-5));
  const last = l.top_logprobs[ctx.length];
  assert.is(
    l.token_logprobs[ctx.length],
    Math.max(...(Object.values(last) as number[])),
    'greedy token is the top one',
  );
  // Without echo: the completion's tokens only, offsets after the prompt text.
  const g = await t.client.completions.create({
    model: 'm',
    prompt: 'My life motto:',
    max_tokens: 3,
    temperature: 0,
    logprobs: 2,
  });
  const glp = g.choices[0]!.logprobs!;
  const pids = trained.tokenizer.encode('My life motto:');
  const gen = (await trained.generate(pids, { temperature: 0, maxNewTokens: 3 })).sequences[0]!.tokens;
  assert.equal(glp.tokens, gen.map(dec));
  assert.is(glp.text_offset![0], 'My life motto:'.length);
  const sc3 = await trained.score([...pids, ...gen], { top: 2 });
  gen.forEach((_, k) => assert.ok(Math.abs(glp.token_logprobs![k]! - sc3.tokens.at(-3 + k)!.logprob) < 1e-5));
  await t.server.close();
  started.splice(started.indexOf(t), 1);
  trained.destroy();
});

test('sampled completions: logprobs come from the generation (no scoring call), equal model.score of prompt + completion; an echoed prompt is scored once', async () => {
  const pids = tiny.tokenizer.encode(PROMPT);
  const dec = (id: number) => tiny.tokenizer.decode([id]);
  const score = tiny.score.bind(tiny);
  let calls = 0;
  tiny.score = (...a: Parameters<Model['score']>) => {
    calls++;
    return score(...a);
  };
  try {
    const body = { model: 'm', prompt: PROMPT, max_tokens: 6, temperature: 0.8, top_k: 40, seed: 7, n: 2, logprobs: 3 };
    const r = await main.client.completions.create(loose({ ...body, ignore_eos: true }));
    assert.is(calls, 0, "a completion's logprobs need no scoring call");
    for (const [j, c] of r.choices.entries()) {
      const o = { temperature: 0.8, topK: 40, seed: deriveSeed(7, j), maxNewTokens: 6, stopAtEos: false };
      const want = (await tiny.generate(pids, o)).sequences[0]!.tokens;
      const lp = c.logprobs!;
      assert.equal(lp.tokens, want.map(dec), `choice ${j} tokens`);
      const sc = await score([...pids, ...want], { top: 3 });
      want.forEach((id, k) => {
        const t = sc.tokens[pids.length - 1 + k]!;
        assert.ok(Math.abs(lp.token_logprobs![k]! - t.logprob) < 1e-4, `choice ${j} token ${k}`);
        const top = lp.top_logprobs![k]!;
        for (const alt of t.top!) assert.ok(Math.abs(top[dec(alt.id)]! - alt.logprob) < 1e-4, `top of ${k}`);
        assert.ok(Math.abs(top[dec(id)]! - t.logprob) < 1e-4, 'the token itself is in top_logprobs');
      });
    }
    calls = 0;
    const e = await main.client.completions.create(loose({ ...body, echo: true, ignore_eos: true }));
    assert.is(calls, 1, 'the prompt of both choices is scored once');
    const sc = await score(pids, { top: 3 });
    for (const c of e.choices) {
      const lp = c.logprobs!;
      assert.is(lp.token_logprobs![0], null);
      sc.tokens.forEach((t, k) => assert.ok(Math.abs(lp.token_logprobs![k + 1]! - t.logprob) < 1e-5, `prompt ${k}`));
      assert.equal(lp.token_logprobs!.slice(pids.length), r.choices[c.index]!.logprobs!.token_logprobs);
    }
  } finally {
    tiny.score = score;
  }
});

test('streamed logprobs: each token goes out with its text, the entries add up to the non-streamed ones (echo, n, stop strings, chat)', async () => {
  type Lp = { tokens: string[]; token_logprobs: Array<number | null>; top_logprobs: unknown[]; text_offset: number[] };
  const full = (await greedy(PROMPT, 12)).text;
  const stop = full.slice(8, 11);
  const cases = [
    { prompt: PROMPT, max_tokens: 8, temperature: 0, logprobs: 2 },
    { prompt: [PROMPT, 'Why'], n: 2, seed: 3, max_tokens: 6, logprobs: 1, echo: true },
    { prompt: PROMPT, max_tokens: 12, temperature: 0, logprobs: 3, stop: ['zzzz', stop] },
  ];
  for (const req of cases) {
    const body = { model: 'm', ...req };
    const whole = await main.client.completions.create(
      loose<OpenAI.CompletionCreateParamsNonStreaming>({ ...body, ignore_eos: true }),
    );
    const stream = await main.client.completions.create(
      loose<OpenAI.CompletionCreateParamsStreaming>({ ...body, ignore_eos: true, stream: true }),
    );
    const choices = whole.choices.length;
    const texts = Array<string>(choices).fill('');
    const lps: Lp[] = Array.from({ length: choices }, () => ({
      tokens: [],
      token_logprobs: [],
      top_logprobs: [],
      text_offset: [],
    }));
    const withLp = Array<number>(choices).fill(0);
    const firstText: string[] = [];
    for await (const c of stream) {
      for (const ch of c.choices) {
        firstText[ch.index] ??= ch.text;
        texts[ch.index] += ch.text;
        const l = ch.logprobs as Lp | null;
        if (!l) continue;
        withLp[ch.index]!++;
        for (const k of ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset'] as const)
          (lps[ch.index]![k] as unknown[]).push(...l[k]);
      }
    }
    const what = JSON.stringify(req);
    assert.equal(
      texts,
      whole.choices.map((c) => c.text),
      `${what}: texts`,
    );
    assert.equal(
      lps,
      whole.choices.map((c) => c.logprobs),
      `${what}: the streamed entries are the non-streamed ones`,
    );
    // Token by token, not once at the end: at least one chunk per 2 tokens carried entries.
    whole.choices.forEach((c, i) =>
      assert.ok(
        withLp[i]! * 2 >= c.logprobs!.tokens!.length,
        `${what}: choice ${i}: ${withLp[i]} chunks with logprobs`,
      ),
    );
    if ('echo' in req) {
      assert.is(firstText[0], PROMPT, 'the echoed prompt opens the stream');
      assert.is(lps[0]!.token_logprobs[0], null);
    }
    if ('stop' in req) assert.is(texts[0], full.slice(0, full.indexOf(stop)), 'the text ends before the stop string');
  }
  const messages = [{ role: 'user' as const, content: 'Say something.' }];
  const chat = { model: 'm', messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 };
  const r = await main.client.chat.completions.create(chat);
  const s = await main.client.chat.completions.create({ ...chat, stream: true });
  const content: unknown[] = [];
  let text = '';
  for await (const c of s) {
    text += c.choices[0]?.delta.content ?? '';
    content.push(...(c.choices[0]?.logprobs?.content ?? []));
  }
  assert.is(text, r.choices[0]!.message.content);
  assert.equal(content, r.choices[0]!.logprobs!.content, 'chat: the streamed entries are the non-streamed ones');
  // Chat takes up to 20 alternatives (OpenAI's limit there; completions' logprobs stops at 5).
  const wide = await main.client.chat.completions.create({ ...chat, max_tokens: 2, top_logprobs: 20 });
  for (const e of wide.choices[0]!.logprobs!.content!) assert.is(e.top_logprobs.length, 20);
  const over = await post(main.base, '/v1/chat/completions', { ...chat, top_logprobs: 21 });
  assert.is(over.status, 400);
  assert.match(over.json.error.message, /'top_logprobs' must be <= 20/);
});

test('concurrent requests share batched steps, and each equals the same request sent alone', async () => {
  const reqs = Array.from({ length: 24 }, (_, i) => ({
    model: 'm',
    prompt: `Request number ${i} says${' more'.repeat(i % 5)}`,
    max_tokens: 3 + (i % 8),
    ...(i % 2 ? { temperature: 0 } : { temperature: 0.8, seed: 100 + i, top_k: 50 }),
  }));
  const shared0 = main.server.scheduler.stats.shared;
  const together = await Promise.all(reqs.map((q) => main.client.completions.create(loose(q))));
  assert.ok(
    main.server.scheduler.stats.shared - shared0 >= 8,
    `shared: ${main.server.scheduler.stats.shared - shared0}`,
  );
  for (let i = 0; i < reqs.length; i++) {
    const alone = await main.client.completions.create(loose(reqs[i]!));
    assert.equal(
      [together[i]!.choices[0]!.text, together[i]!.choices[0]!.finish_reason],
      [alone.choices[0]!.text, alone.choices[0]!.finish_reason],
      `request ${i}`,
    );
  }
});

/** GPU bytes outside the group's cache and kept plans: back to this after every request. */
const outsideBytes = () => tiny.ctx.liveBuffers.bytes - main.server.scheduler.group.bytes;

/** Opens a stream with fetch, reads its first event, returns the aborter and the rest. */
async function openStream(body: Json) {
  const ac = new AbortController();
  const res = await fetch(`${main.base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
    signal: ac.signal,
  });
  const reader = res.body!.getReader();
  const first = await reader.read();
  const rest = (async () => {
    let text = new TextDecoder().decode(first.value);
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return text;
      text += new TextDecoder().decode(value);
    }
  })();
  rest.catch(() => undefined);
  return { ac, rest };
}
const streamText = (sse: string) =>
  sse
    .split('\n\n')
    .filter((e) => e.startsWith('data: {'))
    .map((e) => JSON.parse(e.slice(6)).choices[0]?.text ?? '')
    .join('');

test('a client that disconnects mid-stream: its generation is aborted, alone or merged (its row freed at once, the other stream unaffected); rows and GPU memory come back', async () => {
  const sched = main.server.scheduler;
  await sched.idle();
  const base = outsideBytes();
  // Alone: it got the request's signal and stops at the next step.
  const before = sched.stats;
  const lone = await openStream({ prompt: 'Hello', max_tokens: 1000, ignore_eos: true });
  lone.ac.abort();
  await sched.idle();
  assert.is(sched.stats.failed - before.failed, 1, 'aborted (AbortError), not completed');
  assert.is(sched.stats.completed, before.completed);
  // Merged with another stream: the one that leaves ends alone at its next step.
  const shared0 = sched.stats.shared;
  const failed0 = sched.stats.failed;
  const keep = { prompt: 'Keep going', max_tokens: 300, temperature: 0, ignore_eos: true };
  const [gone, kept] = await Promise.all([
    openStream({ prompt: 'Leaving', max_tokens: 300, ignore_eos: true }),
    openStream(keep),
  ]);
  assert.is(sched.stats.shared - shared0, 2, 'the two streams share one run');
  let keptDone = false;
  const keptText = kept.rest.then((t) => {
    keptDone = true;
    return t;
  });
  const completed0 = sched.stats.completed;
  gone.ac.abort();
  const ended = () => sched.stats.failed > failed0 || sched.stats.completed > completed0;
  while (!ended()) await new Promise((r) => setTimeout(r, 2));
  assert.is(sched.stats.failed - failed0, 1, 'the unit that left was aborted, not run to its end');
  assert.not.ok(keptDone, 'aborted while the other stream goes on');
  assert.is(sched.stats.running, 1);
  // Its row is free at once: a request sent now joins the run in its slot.
  const late = { model: 'm', prompt: 'Late', max_tokens: 4, temperature: 0, ignore_eos: true };
  const lateText = (await main.client.completions.create(loose(late))).choices[0]!.text;
  assert.is(sched.stats.shared - shared0, 3, 'the late request joined the run');
  assert.is(
    lateText,
    (await tiny.generate('Late', { temperature: 0, maxNewTokens: 4, stopAtEos: false })).sequences[0]!.text,
  );
  const text = streamText(await keptText);
  assert.is(
    text,
    (await tiny.generate('Keep going', { temperature: 0, maxNewTokens: 300, stopAtEos: false })).sequences[0]!.text,
  );
  await sched.idle();
  assert.equal([sched.stats.running, sched.stats.queued, sched.stats.failed - failed0], [0, 0, 1]);
  assert.is(outsideBytes(), base, 'GPU memory outside the group back to the baseline');
});

test('a full queue answers 429 with Retry-After; a cancelled queued request is dropped; the rest complete', async () => {
  const small = await start(tiny, { maxBatch: 1, maxQueue: 2, batchWaitMs: 0 });
  const long = small.client.completions.create(
    loose({ model: 'm', prompt: 'Busy', max_tokens: 300, ignore_eos: true }),
  );
  while (small.server.scheduler.stats.running === 0) await new Promise((r) => setTimeout(r, 2));
  // Two waiting: a stream that will be cancelled and a plain request.
  const ac = new AbortController();
  const queuedStream = fetch(`${small.base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'Later', max_tokens: 5, stream: true }),
    signal: ac.signal,
  }).catch((e: Error) => e);
  const waiting = small.client.completions.create({ model: 'm', prompt: 'Waiting', max_tokens: 4, temperature: 0 });
  while (small.server.scheduler.stats.queued < 2) await new Promise((r) => setTimeout(r, 2));
  let refused: unknown;
  try {
    await small.client.completions.create({ model: 'm', prompt: 'One too many', max_tokens: 2 });
  } catch (e) {
    refused = e;
  }
  assert.instance(refused, OpenAI.RateLimitError);
  const err = refused as InstanceType<typeof OpenAI.RateLimitError>;
  assert.is(err.status, 429);
  assert.is(err.headers?.get('retry-after'), '1');
  assert.is((err.error as Json).type, 'rate_limit_error');
  ac.abort();
  await queuedStream;
  while (small.server.scheduler.stats.dropped === 0) await new Promise((r) => setTimeout(r, 2));
  const after = small.client.completions.create({ model: 'm', prompt: 'After', max_tokens: 4, temperature: 0 });
  const [l, w, a] = await Promise.all([long, waiting, after]);
  assert.is(l.usage?.completion_tokens, 300);
  assert.is(w.choices[0]!.text, (await greedy('Waiting', 4)).text);
  assert.is(a.choices[0]!.text, (await greedy('After', 4)).text);
  assert.is(small.server.scheduler.stats.dropped, 1);
});

test('bad requests: 400 naming the field (malformed JSON, types, ranges, unsupported fields), 404, 413; none disturbs a good one', async () => {
  const good = main.client.completions.create({ model: 'm', prompt: PROMPT, max_tokens: 12, temperature: 0 });
  const cases: Array<[unknown, number, string | null, RegExp?]> = [
    ['{"prompt": "x",', 400, null, /JSON/],
    [{ prompt: 'x', temperature: '0.5' }, 400, 'temperature', /must be a number/],
    [{ prompt: 'x', max_tokens: -1 }, 400, 'max_tokens'],
    [{ prompt: 'x', max_tokens: 1.5 }, 400, 'max_tokens'],
    [{ prompt: 'x', top_p: 1.5 }, 400, 'top_p'],
    [{ prompt: 'x', logprobs: 6 }, 400, 'logprobs'],
    [{ prompt: 'x', n: 0 }, 400, 'n'],
    [{ prompt: 'x', stop: '' }, 400, 'stop'],
    [{ prompt: { a: 1 } }, 400, 'prompt', /array of token ids/],
    [{ prompt: [1, 99999] }, 400, 'prompt', /99999/],
    [{ prompt: 'x', logit_bias: { '99999': 1 } }, 400, 'logit_bias'],
    [{ prompt: 'x', logit_bias: { abc: 1 } }, 400, 'logit_bias'],
    [{ prompt: 'x', best_of: 3 }, 400, 'best_of', /best_of/],
    [{ prompt: 'x', suffix: 'and then' }, 400, 'suffix', /suffix/],
    [{ prompt: 'x', max_tokens: 1100 }, 400, 'max_tokens', /maximum context length is 1024/],
    [{ prompt: 'x'.repeat(300 * 1024) }, 413, null, /too large/],
  ];
  for (const [body, status, param, msg] of cases) {
    const r = await post(main.base, '/v1/completions', body, typeof body === 'string');
    const what = JSON.stringify(body).slice(0, 60);
    assert.is(r.status, status, what);
    assert.is(r.json.error?.param, param, what);
    assert.ok(['invalid_request_error'].includes(r.json.error?.type), what);
    if (msg) assert.match(r.json.error.message, msg, what);
  }
  const chatBad = await post(main.base, '/v1/chat/completions', { messages: [{ role: 'robot', content: 'x' }] });
  assert.equal([chatBad.status, chatBad.json.error.param], [400, 'messages[0].role']);
  assert.is((await fetch(`${main.base}/v1/nothing`)).status, 404);
  assert.is((await fetch(`${main.base}/v1/models/other`)).status, 404);
  // Harmless values of unsupported fields pass: best_of 1, suffix null, user.
  const ok = await post(main.base, '/v1/completions', {
    prompt: 'x',
    max_tokens: 2,
    best_of: 1,
    suffix: null,
    user: 'u',
  });
  assert.is(ok.status, 200);
  let typed: unknown;
  try {
    await main.client.completions.create({ model: 'm', prompt: 'x', temperature: 3 });
  } catch (e) {
    typed = e;
  }
  assert.instance(typed, OpenAI.BadRequestError);
  assert.is((typed as InstanceType<typeof OpenAI.BadRequestError>).param, 'temperature');
  assert.is((await good).choices[0]!.text, (await greedy(PROMPT, 12)).text);
});

test('chat completions: the documented transcript template, streamed or not', async () => {
  const messages = [
    { role: 'system' as const, content: 'You are terse.' },
    { role: 'user' as const, content: 'Say something.' },
  ];
  const r = await main.client.chat.completions.create({ model: 'm', messages, max_tokens: 6, temperature: 0 });
  assert.is(chatPrompt(messages), 'System: You are terse.\nUser: Say something.\nAssistant:');
  const ref = await tiny.generate(chatPrompt(messages), { temperature: 0, maxNewTokens: 6, stopStrings: CHAT_STOP });
  assert.is(r.object, 'chat.completion');
  assert.equal(r.choices[0]!.message.role, 'assistant');
  assert.is(r.choices[0]!.message.content, ref.sequences[0]!.text.trimStart());
  const s = await main.client.chat.completions.create({
    model: 'm',
    messages,
    max_tokens: 6,
    temperature: 0,
    stream: true,
  });
  let content = '';
  let role: string | undefined;
  for await (const c of s) {
    role ??= c.choices[0]?.delta.role;
    content += c.choices[0]?.delta.content ?? '';
  }
  assert.equal([role, content], ['assistant', r.choices[0]!.message.content]);
});

test('the CLI: serve refuses bad flags with the usage (exit 2); bench/serve-load.mjs drives `serve` and reports every level', () => {
  const bad = spawnSync(
    process.execPath,
    [join(REPO_ROOT, 'bin', 'gpt2-webgpu.js'), 'serve', '--model', tinyDir(), '--port', 'x'],
    {
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  assert.is(bad.status, 2, bad.stderr);
  assert.match(bad.stderr, /--port must be an integer/);
  assert.match(bad.stderr, /^gpt2-webgpu serve: --port/m); // one line naming the command and the flag
  const r = spawnSync(
    process.execPath,
    [
      join(REPO_ROOT, 'bench', 'serve-load.mjs'),
      '--model',
      tinyDir(),
      '--clients',
      '1,3',
      '--rounds',
      '1',
      '--max-tokens',
      '4',
    ],
    { encoding: 'utf8', timeout: 120_000, cwd: REPO_ROOT },
  );
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /clients +requests +req\/s +tokens\/s +p50 ms +p99 ms +speed-up +load avg/);
  const rows = r.stdout.trim().split('\n').slice(2);
  assert.equal(
    rows.map((l) => l.trim().split(/ +/).slice(0, 2)),
    [
      ['1', '4'],
      ['3', '4'],
    ],
  );
});

test.run();
