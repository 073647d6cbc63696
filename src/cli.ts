/**
 * The `gpt2-webgpu` command line: info, generate, logits, score, sample, beam, bench, serve.
 * Usage errors (an unknown command or flag, with the closest known one; a missing value; a value
 * outside its flag's domain) print one line and exit with 2, before any model is downloaded or
 * loaded; any other error prints its name and message and exits with 1. Every subcommand has
 * --help and --json. Numeric flags take negative values as `--flag -1` (then reject them by their
 * rule where they must not be negative).
 */
import { createEngine, nodeContext } from './node.js';
import {
  closest,
  num,
  parseFlags,
  parseIds,
  readFlagFile,
  UsageError,
  writeFlagFile,
  type Command,
} from './cli-args.js';
import { GPT2WebGPUError, InvalidOptionError } from './errors.js';
import {
  JSON_FLAG,
  MODEL_FLAGS,
  kvDtypeFlag,
  PROMPT_FLAGS,
  SAMPLING_FLAGS,
  progress,
  promptFrom,
  samplingFrom,
  withModel,
  BAN_FLAGS,
  bansFrom,
  dtypeFrom,
} from './cli-model.js';
import type { PartialProfile } from './engine/engine.js';
import { MAX_LOGPROBS, type GenerateStats, type TokenLogprob } from './engine/generate-options.js';
import { sample } from './sampling/sample.js';
import { perplexityOf, type ScoreOptions } from './engine/score.js';
import { formatBench, isBatchFailure, runBench } from './bench.js';

/**
 * The CLI's JSON is snake_case throughout; the library's statistics are camelCase. This table is
 * the one place that maps them (every GenerateStats field, checked by the compiler).
 */
const STATS_JSON: Record<keyof GenerateStats, string> = {
  setupMs: 'setup_ms',
  prefillMs: 'prefill_ms',
  firstTokenMs: 'first_token_ms',
  decodeMsPerToken: 'decode_ms_per_token',
  tokensPerSecond: 'tokens_per_s',
  readbackBytesPerToken: 'readback_bytes_per_token',
  steps: 'steps',
  batchRows: 'batch_rows',
  shifts: 'shifts',
  submitsPerStep: 'submits',
  dispatchesPerStep: 'dispatches_per_step',
};

/** GenerateStats as the CLI prints them in JSON (snake_case keys, STATS_JSON). */
function statsJson(st: GenerateStats): Record<string, number> {
  return Object.fromEntries(Object.entries(STATS_JSON).map(([k, json]) => [json, st[k as keyof GenerateStats]]));
}

/** One generated token's TokenLogprob as `generate --json` prints it (snake_case, each id with its text). */
function logprobJson(id: number, lp: TokenLogprob, dec: (id: number) => string): Record<string, unknown> {
  return {
    id,
    text: dec(id),
    logprob: lp.logprob,
    processed_logprob: lp.processedLogprob,
    greedy: lp.greedy,
    ...(lp.top ? { top: lp.top.map((a) => ({ id: a.id, text: dec(a.id), logprob: a.logprob })) } : {}),
  };
}

/** A command printed its output but part of it failed: message on stderr, exit 1. */
class ReportedFailure extends Error {}

const commands: Record<string, Command> = {
  info: {
    summary: 'describe the WebGPU adapter: backend, features, the limits that matter',
    usage: 'gpt2-webgpu info [--json]',
    flags: { ...JSON_FLAG },
    async run(v) {
      const ctx = await nodeContext();
      const a = ctx.adapter;
      if (v.json) console.log(JSON.stringify({ adapter: a, features_used: ctx.features }, null, 2));
      else {
        console.log(
          `adapter:   ${a.description || a.device} (${a.vendor}${a.architecture ? ', ' + a.architecture : ''})${a.isFallbackAdapter ? ' [fallback/software]' : ''}`,
        );
        console.log(`features:  ${a.features.join(', ')}`);
        console.log(
          `used:      timestamp-query ${ctx.features.timestampQuery}, shader-f16 ${ctx.features.shaderF16}, subgroups ${ctx.features.subgroups}${ctx.features.subgroupSize ? ` (size ${ctx.features.subgroupSize})` : ''}`,
        );
        for (const [k, val] of Object.entries(a.limits)) console.log(`${k.padEnd(34)} ${val}`);
      }
      ctx.destroy();
    },
  },
  generate: {
    summary: 'generate text (streams to stdout; --json prints one object)',
    usage: 'gpt2-webgpu generate --model M (--prompt TEXT | --ids CSV) [options]',
    flags: {
      ...MODEL_FLAGS,
      ...PROMPT_FLAGS,
      ...SAMPLING_FLAGS,
      ...BAN_FLAGS,
      'max-new-tokens': { type: 'string', default: '30', help: 'tokens to generate per sequence' },
      'num-sequences': {
        type: 'string',
        default: '1',
        help: 'independent continuations (batched; sequence i uses seed deriveSeed(seed, i))',
      },
      'no-stop-at-eos': { type: 'boolean', default: false, help: 'keep going after <|endoftext|>' },
      'no-cache': { type: 'boolean', default: false, help: 'recompute the whole sequence every step (checking mode)' },
      stop: {
        type: 'string',
        multiple: true,
        help: 'stop when the text contains this string (give --stop more than once for several)',
      },
      'stop-token-ids': { type: 'string', help: 'comma-separated token ids that end a sequence (finish reason stop)' },
      'eos-token-id': { type: 'string', help: "comma-separated end-of-sequence ids (default: the model's)" },
      'exclude-stop': {
        type: 'boolean',
        default: false,
        help: 'leave the stop string or stop token out of the text (OpenAI behaviour)',
      },
      logprobs: {
        type: 'string',
        help: "each token's log-probabilities in the --json output: 0 its own (raw, and as drawn), 1-20 also the N most likely tokens",
      },
      ...JSON_FLAG,
    },
    async run(v) {
      const prompt = promptFrom(v);
      const s = samplingFrom(v);
      const maxNewTokens = num(v['max-new-tokens'], 'max-new-tokens', { int: true, min: 0, max: 1_000_000 });
      const numSequences = num(v['num-sequences'], 'num-sequences', { int: true, min: 1, max: 1024 });
      const logprobs =
        v.logprobs === undefined ? undefined : num(v.logprobs, 'logprobs', { int: true, min: 0, max: MAX_LOGPROBS });
      if (logprobs !== undefined && !v.json)
        throw new UsageError('--logprobs needs --json (the log-probabilities are fields of its sequences)');
      const stopStrings = v.stop as string[] | undefined;
      if (stopStrings?.some((x) => x === '')) throw new UsageError('--stop must not be empty');
      await withModel(v, async (model) => {
        const streamOut = !v.json && numSequences === 1;
        const res = await model.generate(prompt, {
          ...s,
          maxNewTokens,
          numSequences,
          stopAtEos: !v['no-stop-at-eos'],
          useCache: !v['no-cache'],
          stopStrings,
          stopTokenIds:
            v['stop-token-ids'] === undefined ? undefined : parseIds(String(v['stop-token-ids']), 'stop-token-ids'),
          eosTokenId: v['eos-token-id'] === undefined ? undefined : parseIds(String(v['eos-token-id']), 'eos-token-id'),
          includeStopString: !v['exclude-stop'],
          logprobs,
          onToken: streamOut ? (ev) => process.stdout.write(ev.text) : undefined,
        });
        if (v.json) {
          const dec = (id: number) => model.tokenizer.decode([id]);
          console.log(
            JSON.stringify({
              prompt_ids: res.promptIds,
              sequences: res.sequences.map((q) => ({
                tokens: q.tokens,
                text: q.text,
                finish_reason: q.finishReason,
                ...(q.logprobs ? { logprobs: q.logprobs.map((lp, i) => logprobJson(q.tokens[i]!, lp, dec)) } : {}),
              })),
              seed: res.seed,
              stats: statsJson(res.stats),
            }),
          );
        } else {
          if (streamOut) process.stdout.write('\n');
          else res.sequences.forEach((q, i) => console.log(`--- sequence ${i}\n${q.text}`));
          process.stderr.write(
            `seed ${res.seed}; first token ${res.stats.firstTokenMs.toFixed(1)} ms (setup ${res.stats.setupMs.toFixed(1)} + prefill ${res.stats.prefillMs.toFixed(1)}); decode ${res.stats.decodeMsPerToken.toFixed(2)} ms/token; ${res.stats.tokensPerSecond.toFixed(1)} tokens/s\n`,
          );
        }
      });
    },
  },
  logits: {
    summary: 'write float32 little-endian logits of a prompt to a file',
    usage: 'gpt2-webgpu logits --model M --ids 1,2,3 [--all-positions] --out FILE',
    flags: {
      ...MODEL_FLAGS,
      ...PROMPT_FLAGS,
      'all-positions': {
        type: 'boolean',
        default: false,
        help: 'logits at every position ([T, vocab]) instead of the last ([vocab])',
      },
      out: { type: 'string', help: 'output file (float32 little-endian)' },
      ...JSON_FLAG,
    },
    async run(v) {
      const prompt = promptFrom(v);
      if (typeof v.out !== 'string') throw new UsageError('--out FILE is required');
      await withModel(v, async (model) => {
        const ids = typeof prompt === 'string' ? model.tokenizer.encode(prompt) : prompt;
        const r = await model.logits(ids, { allPositions: Boolean(v['all-positions']) });
        writeFlagFile('out', v.out as string, new Uint8Array(r.data.buffer, r.data.byteOffset, r.data.byteLength));
        console.log(JSON.stringify({ shape: r.shape }));
      });
    },
  },
  score: {
    summary: 'log-probability of every token given the ones before it, and the perplexity (on the GPU)',
    usage:
      'gpt2-webgpu score --model M (--text T | --file F | --ids CSV) [--context T] [--window W --stride S] [--top N] [--json]',
    flags: {
      ...MODEL_FLAGS,
      text: { type: 'string', help: 'text to score' },
      file: { type: 'string', help: 'file whose text (UTF-8) is scored' },
      ids: { type: 'string', help: 'token ids to score, comma-separated' },
      context: { type: 'string', help: 'text before the scored one: conditions it, is not scored' },
      window: { type: 'string', help: 'tokens per forward window (default: the model context n_positions)' },
      stride: { type: 'string', help: 'tokens between window starts for longer texts (default window / 2)' },
      top: { type: 'string', default: '0', help: 'alternatives reported per token (0-20)' },
      ...JSON_FLAG,
    },
    async run(v) {
      const given = ['text', 'file', 'ids'].filter((k) => v[k] !== undefined);
      if (given.length !== 1) throw new UsageError('give exactly one of --text, --file, --ids');
      const top = num(v.top, 'top', { int: true, min: 0, max: 20 });
      const opts: ScoreOptions = { top };
      if (v.window !== undefined) opts.window = num(v.window, 'window', { int: true, min: 2 });
      if (v.stride !== undefined) opts.stride = num(v.stride, 'stride', { int: true, min: 1 });
      if (typeof v.context === 'string') opts.context = v.context;
      const text =
        v.ids !== undefined
          ? parseIds(v.ids as string)
          : v.file !== undefined
            ? readFlagFile('file', v.file as string).toString('utf8')
            : (v.text as string);
      await withModel(v, async (model) => {
        const r = await model.score(text, opts);
        const p = perplexityOf(r);
        const dec = (id: number) => model.tokenizer.decode([id]);
        if (v.json) {
          const tokens = r.tokens.map((t) => ({
            ...t,
            text: dec(t.id),
            ...(t.top ? { top: t.top.map((a) => ({ ...a, text: dec(a.id) })) } : {}),
          }));
          const out = { tokens, logprob: r.logprob, count: p.tokens, perplexity: p.perplexity };
          console.log(JSON.stringify({ ...out, perplexity_hf: p.perplexityHf, windows: r.windows.length }));
          return;
        }
        for (const t of r.tokens)
          console.log(
            `${String(t.position).padStart(6)} ${JSON.stringify(dec(t.id)).padEnd(16)} ${t.logprob.toFixed(4).padStart(9)}${t.greedy ? '  greedy' : ''}` +
              (t.top
                ? `  top: ${t.top.map((a) => `${JSON.stringify(dec(a.id))} ${a.logprob.toFixed(3)}`).join(', ')}`
                : ''),
          );
        console.log(
          `${p.tokens} tokens, log-prob ${r.logprob.toFixed(4)}, perplexity ${p.perplexity.toFixed(4)} (HF's weighting: ${p.perplexityHf.toFixed(4)}; ${r.windows.length} window(s))`,
        );
      });
    },
  },
  sample: {
    summary: 'draw tokens on the GPU from a logits file; prints {token id: count} of the ids drawn',
    usage: 'gpt2-webgpu sample --logits FILE.f32 --count N [sampling options] [--probs-out FILE.f32] --json',
    flags: {
      logits: { type: 'string', help: 'float32 little-endian logits [vocab]' },
      count: { type: 'string', default: '1', help: 'number of draws' },
      'probs-out': { type: 'string', help: 'write the distribution sampled from (f32 [vocab])' },
      ...SAMPLING_FLAGS,
      ...JSON_FLAG,
    },
    async run(v) {
      if (typeof v.logits !== 'string') throw new UsageError('--logits FILE.f32 is required');
      const count = num(v.count, 'count', { int: true, min: 1, max: 10_000_000 });
      const sampling = samplingFrom(v);
      const bytes = readFlagFile('logits', v.logits);
      if (bytes.byteLength === 0 || bytes.byteLength % 4)
        throw new InvalidOptionError(`${v.logits}: ${bytes.byteLength} bytes is not a whole number of float32 values`);
      const logits = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
      const ctx = await nodeContext();
      try {
        const r = await sample(ctx, logits, count, sampling);
        if (typeof v['probs-out'] === 'string')
          writeFlagFile(
            'probs-out',
            v['probs-out'],
            new Uint8Array(r.probs.buffer, r.probs.byteOffset, r.probs.byteLength),
          );
        // Only the ids drawn (a vocabulary has 50,257 entries, nearly all 0), in id order.
        const counts: Record<number, number> = {};
        r.counts.forEach((c, id) => {
          if (c > 0) counts[id] = c;
        });
        console.log(JSON.stringify({ counts, seed: r.seed }));
      } finally {
        ctx.destroy();
      }
    },
  },
  beam: {
    summary: 'beam search on the GPU with the KV cache',
    usage:
      'gpt2-webgpu beam --model M (--prompt TEXT | --ids CSV) --num-beams B --num-sequences R --max-new-tokens N [--length-penalty L] [--early-stopping] --json',
    flags: {
      ...MODEL_FLAGS,
      ...PROMPT_FLAGS,
      'num-beams': { type: 'string', default: '4', help: 'beams kept per step' },
      'num-sequences': { type: 'string', default: '1', help: 'hypotheses returned (<= num-beams)' },
      'num-return': { type: 'string', help: '', deprecatedFor: 'num-sequences' },
      'max-new-tokens': { type: 'string', default: '20', help: 'new tokens at most' },
      'length-penalty': { type: 'string', default: '0', help: 'score = logprob / new_tokens^L' },
      ...BAN_FLAGS,
      'early-stopping': {
        type: 'boolean',
        default: false,
        help: "HF's early_stopping=True: stop once num-beams hypotheses ended with EOS (default: once num-sequences have)",
      },
      ...JSON_FLAG,
    },
    async run(v) {
      const prompt = promptFrom(v);
      const numBeams = num(v['num-beams'], 'num-beams', { int: true, min: 1, max: 256 });
      const numSequences = num(v['num-sequences'], 'num-sequences', { int: true, min: 1 });
      if (numSequences > numBeams)
        throw new UsageError(`--num-sequences (${numSequences}) must be <= --num-beams (${numBeams})`);
      const opts = {
        numBeams,
        numReturnSequences: numSequences,
        maxNewTokens: num(v['max-new-tokens'], 'max-new-tokens', { int: true, min: 0, max: 100_000 }),
        lengthPenalty: num(v['length-penalty'], 'length-penalty'),
        earlyStopping: Boolean(v['early-stopping']),
        ...bansFrom(v),
      };
      await withModel(v, async (model) => {
        const res = await model.beamSearch(prompt, opts);
        // As generate: tokens and text are the completion's; the prompt's ids come separately.
        const out = res.sequences.map((b) => ({
          logprob: b.logprob,
          score: b.score,
          tokens: b.tokens,
          text: b.text,
          finished: b.finished,
          finish_reason: b.finishReason,
        }));
        if (v.json) console.log(JSON.stringify({ prompt_ids: res.promptIds, beams: out }));
        else
          out.forEach((b) =>
            console.log(`${b.score.toFixed(4)} (logprob ${b.logprob.toFixed(4)}): ${JSON.stringify(b.text)}`),
          );
      });
    },
  },
  bench: {
    summary: 'benchmark load, prefill and decode (per batch size), with per-kernel GPU times',
    usage:
      'gpt2-webgpu bench [--model random:gpt2] [--batch 1,4,16,64] [--prompt-tokens P] [--new-tokens N] [--repeat R] [--dtype f32|f16|q8|q4] [--wait auto|sleep|spin] [--profile FILE.json] [--pipeline-depth D] [--sessions] [--json]',
    flags: {
      ...MODEL_FLAGS,
      model: { ...MODEL_FLAGS.model!, default: 'random:gpt2' },
      batch: { type: 'string', default: '1', help: 'batch sizes, comma-separated (e.g. 1,4,16,64)' },
      'prompt-tokens': { type: 'string', default: '128', help: 'prompt length P' },
      'new-tokens': {
        type: 'string',
        default: '32',
        help: 'tokens generated per run (1: time the prefill alone, no decode step)',
      },
      repeat: { type: 'string', default: '3', help: 'runs per batch size (median and p90 over them)' },
      'no-profile': { type: 'boolean', default: false, help: 'skip the per-kernel GPU timings (timestamp queries)' },
      wait: {
        type: 'string',
        default: 'auto',
        help: 'how the host thread waits for the GPU: sleep (in 0.5 ms slices), spin (dawn.node polling), auto (sleep on CPU adapters)',
      },
      profile: {
        type: 'string',
        help: 'a JSON file of device-profile fields merged over the adapter\'s (kernel choices to compare), e.g. {"attention": {"prompt": "blocks"}} or {"name": "gpu"}; the report prints the profile it ran',
      },
      'pipeline-depth': {
        type: 'string',
        help: 'decode steps queued ahead of the token read-back, 1-16 (default 3 on GPUs, 1 on CPU adapters)',
      },
      sessions: {
        type: 'boolean',
        default: false,
        help: 'also time B conversations of different histories: B separate sessions at once against one session group',
      },
      ...JSON_FLAG,
    },
    async run(v) {
      const batches = String(v.batch)
        .split(',')
        .map((b) => num(b, 'batch', { int: true, min: 1, max: 1024 }));
      const waits = { auto: 'auto', sleep: true, spin: false } as const;
      if (!Object.hasOwn(waits, String(v.wait)))
        throw new UsageError(`--wait must be auto, sleep or spin, got "${String(v.wait)}"`);
      const profile = v.profile === undefined ? undefined : profileFile(String(v.profile));
      const kvDtype = kvDtypeFlag(v);
      const dtype = dtypeFrom(v);
      const engine = await createEngine({ yieldWhileWaiting: waits[String(v.wait) as keyof typeof waits] });
      try {
        const report = await runBench(engine, {
          model: String(v.model),
          dtype,
          kvDtype,
          batches,
          promptTokens: num(v['prompt-tokens'], 'prompt-tokens', { int: true, min: 1 }),
          newTokens: num(v['new-tokens'], 'new-tokens', { int: true, min: 1 }),
          repeat: num(v.repeat, 'repeat', { int: true, min: 1 }),
          timings: !v['no-profile'],
          profile,
          pipelineDepth:
            v['pipeline-depth'] === undefined
              ? undefined
              : num(v['pipeline-depth'], 'pipeline-depth', { int: true, min: 1, max: 16 }),
          sessions: Boolean(v.sessions),
          onProgress: v.json ? undefined : progress(),
        });
        console.log(v.json ? JSON.stringify(report) : formatBench(report));
        const failed = report.results.filter(isBatchFailure);
        if (failed.length)
          throw new ReportedFailure(`bench: ${failed.map((f) => `batch ${f.batch} failed (${f.error})`).join('; ')}`);
      } finally {
        engine.destroy();
      }
    },
  },
  serve: {
    summary: 'serve an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions) with batched requests',
    usage: 'gpt2-webgpu serve --model M [--host 127.0.0.1] [--port 8080] [--max-batch N] [--max-queue Q] [options]',
    flags: {
      ...MODEL_FLAGS,
      host: { type: 'string', default: '127.0.0.1', help: 'address to listen on' },
      port: { type: 'string', default: '8080', help: 'port to listen on (0: any free port)' },
      'max-batch': { type: 'string', default: '16', help: 'sequences advanced together in one batched step' },
      'max-queue': { type: 'string', default: '256', help: 'sequences waiting at most; past it requests get 429' },
      context: { type: 'string', help: "context window per sequence (default: the model's n_positions)" },
      'batch-wait-ms': {
        type: 'string',
        default: '20',
        help: 'an idle server starts a batch once nothing arrived for this long (and the clients just answered are back)',
      },
      'max-hold-ms': {
        type: 'string',
        default: '2000',
        help: 'longest a request waits for a slot of the running batch before starting another',
      },
      'max-body': { type: 'string', default: '4194304', help: 'largest request body in bytes (413 past it)' },
      'served-model-name': { type: 'string', help: 'model id the API reports (default: --model)' },
    },
    async run(v) {
      const { serve } = await import('./server/serve.js');
      const opts = {
        host: String(v.host),
        port: num(v.port, 'port', { int: true, min: 0, max: 65535 }),
        maxBatch: num(v['max-batch'], 'max-batch', { int: true, min: 1, max: 1024 }),
        maxQueue: num(v['max-queue'], 'max-queue', { int: true, min: 1 }),
        batchWaitMs: num(v['batch-wait-ms'], 'batch-wait-ms', { int: true, min: 0, max: 1000 }),
        maxHoldMs: num(v['max-hold-ms'], 'max-hold-ms', { int: true, min: 0, max: 600000 }),
        bodyLimit: num(v['max-body'], 'max-body', { int: true, min: 1024 }),
        ...(v.context !== undefined ? { context: num(v.context, 'context', { int: true, min: 2 }) } : {}),
      };
      await withModel(v, (model) =>
        serve(model, {
          ...opts,
          modelName: typeof v['served-model-name'] === 'string' ? v['served-model-name'] : String(v.model),
        }),
      );
    },
  },
};

/** A --profile file: JSON of partial device-profile fields (the engine checks the fields when it loads the model). */
function profileFile(path: string): PartialProfile {
  const text = readFlagFile('profile', path).toString('utf8');
  try {
    return JSON.parse(text) as PartialProfile;
  } catch (e) {
    throw new InvalidOptionError(`--profile ${path}: not JSON (${(e as Error).message})`, { cause: e });
  }
}

function helpText(name: string, c: Command): string {
  const lines = [`${c.usage}`, '', c.summary, '', 'options:'];
  for (const [k, f] of Object.entries(c.flags)) {
    if (f.deprecatedFor) continue;
    const d = f.default !== undefined && f.type === 'string' ? ` (default ${f.default})` : '';
    lines.push(`  --${k}${f.type === 'string' ? ' VALUE' : ''}`.padEnd(28) + ` ${f.help}${d}`);
  }
  lines.push('  --help'.padEnd(28) + ' show this help');
  void name;
  return lines.join('\n');
}

function mainHelp(): string {
  return [
    'usage: gpt2-webgpu <command> [options]',
    '',
    'commands:',
    ...Object.entries(commands).map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`),
    '',
    'gpt2-webgpu <command> --help for its options',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(mainHelp());
    return name ? 0 : 2;
  }
  const cmd = Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (!cmd) {
    const guess = closest(name, Object.keys(commands));
    console.error(
      `gpt2-webgpu: unknown command "${name}" ${guess ? `(did you mean ${guess}?)` : `(commands: ${Object.keys(commands).join(', ')})`}`,
    );
    return 2;
  }
  try {
    const values = parseFlags(name, cmd, rest);
    if (values.help) {
      console.log(helpText(name, cmd));
      return 0;
    }
    await cmd.run(values);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`gpt2-webgpu ${name}: ${e.message}`);
      return 2;
    }
    if (e instanceof ReportedFailure) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    if (e instanceof GPT2WebGPUError) {
      console.error(`error: ${e.name}: ${e.message}`);
      return 1;
    }
    console.error(`error: ${(e as Error)?.stack ?? String(e)}`);
    return 1;
  }
}
