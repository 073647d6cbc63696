/**
 * The `gpt2-webgpu` command line: info, generate, logits, sample, beam, bench.
 * Unknown flags or missing values print the usage and exit with 2; any other error prints its
 * name and message and exits with 1. Every subcommand has --help and --json.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { readFileSync, writeFileSync } from 'node:fs';
import { createEngine, nodeContext } from './node.js';
import { GPT2WebGPUError, InvalidOptionError } from './errors.js';
import type { LoadProgress, Model } from './engine/engine.js';
import type { GenerateStats } from './engine/generate-options.js';
import { sample } from './sampling/sample.js';
import type { SamplingOptions } from './sampling/options.js';
import { formatBench, isBatchFailure, runBench } from './bench.js';
import type { GemmTile } from './kernels/matmul.js';
import { isPowerOfTwoIn } from './gpu/common.js';

type Flag = { type: 'string' | 'boolean'; default?: string | boolean; help: string; short?: string };
interface Command {
  summary: string;
  usage: string;
  flags: Record<string, Flag>;
  run(v: Record<string, string | boolean | undefined>): Promise<void>;
}

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

class UsageError extends Error {}
/** A command printed its output but part of it failed: message on stderr, exit 1. */
class ReportedFailure extends Error {}

const MODEL_FLAGS: Record<string, Flag> = {
  model: {
    type: 'string',
    help: 'model source: random:<gpt2|gpt2-medium|gpt2-large|gpt2-xl|distilgpt2|config.json>, a local directory (config.json + model.safetensors), or a Hugging Face id (gpt2, openai-community/gpt2-medium, ...)',
  },
  f16: { type: 'boolean', default: false, help: 'store weights as f16 (halves memory traffic; math stays f32)' },
  'weights-seed': { type: 'string', default: '0', help: 'seed of random: weights' },
};
const SAMPLING_FLAGS: Record<string, Flag> = {
  temperature: { type: 'string', default: '1', help: 'softmax temperature; 0 = greedy (argmax, ties -> smallest id)' },
  'top-k': { type: 'string', default: '0', help: 'keep the k most likely tokens (ties at the k-th kept); 0 = off' },
  'top-p': {
    type: 'string',
    default: '0',
    help: 'nucleus: keep the smallest most-likely set reaching p; 0 or 1 = off',
  },
  'min-p': {
    type: 'string',
    default: '0',
    help: 'drop tokens with probability < min_p x the top probability; 0 = off',
  },
  'min-tokens-to-keep': { type: 'string', default: '1', help: 'top-p / min-p keep at least this many tokens' },
  'freq-penalty': { type: 'string', default: '0', help: 'subtract this x (count of the token in prompt + output)' },
  'presence-penalty': { type: 'string', default: '0', help: 'subtract this once for every token already present' },
  'repetition-penalty': {
    type: 'string',
    default: '1',
    help: 'HF repetition penalty (divide positive / multiply negative logits of present tokens); 1 = off',
  },
  seed: { type: 'string', help: 'RNG seed (integer); default: random, reported in the output' },
};
const PROMPT_FLAGS: Record<string, Flag> = {
  prompt: { type: 'string', help: 'prompt text' },
  ids: { type: 'string', help: 'prompt as comma-separated token ids' },
};
const JSON_FLAG: Record<string, Flag> = { json: { type: 'boolean', default: false, help: 'print one JSON object' } };

function num(v: unknown, name: string, { int = false, min = -Infinity, max = Infinity } = {}): number {
  const s = String(v);
  const x = Number(s);
  if (s.trim() === '' || !Number.isFinite(x) || (int && !Number.isInteger(x)) || x < min || x > max) {
    const range =
      min > -Infinity && max < Infinity
        ? ` in [${min}, ${max}]`
        : min > -Infinity
          ? ` >= ${min}`
          : max < Infinity
            ? ` <= ${max}`
            : '';
    throw new UsageError(`--${name} must be ${int ? 'an integer' : 'a number'}${range}, got "${s}"`);
  }
  return x;
}

/** Reads the file a flag names; a missing or unreadable file is an InvalidOptionError naming both. */
function readFlagFile(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new InvalidOptionError(
      `--${flag} ${path}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

/** Writes the file a flag names; failure is an InvalidOptionError naming both. */
function writeFlagFile(flag: string, path: string, data: Uint8Array): void {
  try {
    writeFileSync(path, data);
  } catch (e) {
    throw new InvalidOptionError(
      `--${flag} ${path}: cannot write it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

function parseIds(s: string): number[] {
  const parts = s.split(',').map((p) => p.trim());
  if (parts.some((p) => !/^\d+$/.test(p)))
    throw new UsageError(`--ids must be comma-separated non-negative integers, got "${s}"`);
  return parts.map(Number);
}

function samplingFrom(v: Record<string, unknown>): SamplingOptions {
  return {
    temperature: num(v.temperature, 'temperature'),
    topK: num(v['top-k'], 'top-k'),
    topP: num(v['top-p'], 'top-p'),
    minP: num(v['min-p'], 'min-p'),
    minTokensToKeep: num(v['min-tokens-to-keep'], 'min-tokens-to-keep'),
    freqPenalty: num(v['freq-penalty'], 'freq-penalty'),
    presencePenalty: num(v['presence-penalty'], 'presence-penalty'),
    repetitionPenalty: num(v['repetition-penalty'], 'repetition-penalty'),
    ...(v.seed !== undefined ? { seed: num(v.seed, 'seed', { int: true, min: 0 }) } : {}),
  };
}

/** A progress reporter: a redrawn bar on a TTY, a log line every 10% otherwise. */
function progress(): (p: LoadProgress) => void {
  const tty = Boolean(process.stderr.isTTY);
  let lastPct = -1;
  let lastPhase = '';
  return (p) => {
    const pct = p.total > 0 ? Math.floor((100 * p.loaded) / p.total) : 0;
    if (tty) {
      const w = 30;
      const fill = Math.round((w * pct) / 100);
      process.stderr.write(
        `\r${p.phase.padEnd(9)} [${'#'.repeat(fill)}${'.'.repeat(w - fill)}] ${String(pct).padStart(3)}% ${(p.loaded / 1e6).toFixed(1)}/${(p.total / 1e6).toFixed(1)} MB`,
      );
      if (p.loaded >= p.total) process.stderr.write('\n');
    } else if (p.phase !== lastPhase || Math.floor(pct / 10) !== Math.floor(lastPct / 10)) {
      process.stderr.write(
        `${p.phase}: ${pct}% (${(p.loaded / 1e6).toFixed(1)} of ${(p.total / 1e6).toFixed(1)} MB)\n`,
      );
    }
    lastPct = pct;
    lastPhase = p.phase;
  };
}

async function withModel<T>(v: Record<string, unknown>, fn: (m: Model) => Promise<T>): Promise<T> {
  if (typeof v.model !== 'string' || !v.model)
    throw new UsageError('--model is required (e.g. --model random:gpt2, --model gpt2, --model ./my-gpt2-dir)');
  const engine = await createEngine();
  try {
    const model = await engine.loadModel(v.model, {
      dtype: v.f16 ? 'f16' : 'f32',
      seed: num(v['weights-seed'], 'weights-seed', { int: true, min: 0 }),
      onProgress: progress(),
    });
    return await fn(model);
  } finally {
    engine.destroy();
  }
}

function promptFrom(v: Record<string, unknown>): string | number[] {
  if (v.prompt !== undefined && v.ids !== undefined) throw new UsageError('give either --prompt or --ids, not both');
  if (typeof v.ids === 'string') return parseIds(v.ids);
  if (typeof v.prompt === 'string') return v.prompt;
  throw new UsageError('a prompt is required: --prompt TEXT or --ids 1,2,3');
}

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
      'max-new-tokens': { type: 'string', default: '30', help: 'tokens to generate per sequence' },
      'num-sequences': {
        type: 'string',
        default: '1',
        help: 'independent continuations (batched; sequence i uses seed deriveSeed(seed, i))',
      },
      'no-stop-at-eos': { type: 'boolean', default: false, help: 'keep going after <|endoftext|>' },
      'no-cache': { type: 'boolean', default: false, help: 'recompute the whole sequence every step (checking mode)' },
      stop: { type: 'string', help: 'stop string (repeatable via comma-free multiple --stop)' },
      ...JSON_FLAG,
    },
    async run(v) {
      const prompt = promptFrom(v);
      const s = samplingFrom(v);
      const maxNewTokens = num(v['max-new-tokens'], 'max-new-tokens', { int: true, min: 0 });
      const numSequences = num(v['num-sequences'], 'num-sequences', { int: true, min: 1 });
      await withModel(v, async (model) => {
        const streamOut = !v.json && numSequences === 1;
        const res = await model.generate(prompt, {
          ...s,
          maxNewTokens,
          numSequences,
          stopAtEos: !v['no-stop-at-eos'],
          useCache: !v['no-cache'],
          stopStrings: typeof v.stop === 'string' ? [v.stop] : undefined,
          onToken: streamOut ? (ev) => process.stdout.write(ev.text) : undefined,
        });
        if (v.json) {
          console.log(
            JSON.stringify({
              prompt_ids: res.promptIds,
              sequences: res.sequences.map((q) => ({ tokens: q.tokens, text: q.text, finish_reason: q.finishReason })),
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
  sample: {
    summary: 'draw tokens on the GPU from a logits file; prints counts per token id',
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
      const bytes = readFlagFile('logits', v.logits);
      if (bytes.byteLength === 0 || bytes.byteLength % 4)
        throw new InvalidOptionError(`${v.logits}: ${bytes.byteLength} bytes is not a whole number of float32 values`);
      const logits = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
      const ctx = await nodeContext();
      try {
        const r = await sample(ctx, logits, count, samplingFrom(v));
        if (typeof v['probs-out'] === 'string')
          writeFlagFile(
            'probs-out',
            v['probs-out'],
            new Uint8Array(r.probs.buffer, r.probs.byteOffset, r.probs.byteLength),
          );
        console.log(JSON.stringify({ counts: Array.from(r.counts), seed: r.seed }));
      } finally {
        ctx.destroy();
      }
    },
  },
  beam: {
    summary: 'beam search on the GPU with the KV cache',
    usage:
      'gpt2-webgpu beam --model M (--prompt TEXT | --ids CSV) --num-beams B --num-return R --max-new-tokens N [--length-penalty L] [--early-stopping] --json',
    flags: {
      ...MODEL_FLAGS,
      ...PROMPT_FLAGS,
      'num-beams': { type: 'string', default: '4', help: 'beams kept per step' },
      'num-return': { type: 'string', default: '1', help: 'hypotheses returned (<= num-beams)' },
      'max-new-tokens': { type: 'string', default: '20', help: 'new tokens at most' },
      'length-penalty': { type: 'string', default: '0', help: 'score = logprob / new_tokens^L' },
      'early-stopping': {
        type: 'boolean',
        default: false,
        help: "HF's early_stopping=True: stop once num-beams hypotheses ended with EOS (default: once num-return have, the exercise's rule)",
      },
      ...JSON_FLAG,
    },
    async run(v) {
      const prompt = promptFrom(v);
      await withModel(v, async (model) => {
        const res = await model.beamSearch(prompt, {
          numBeams: num(v['num-beams'], 'num-beams', { int: true, min: 1 }),
          numReturnSequences: num(v['num-return'], 'num-return', { int: true, min: 1 }),
          maxNewTokens: num(v['max-new-tokens'], 'max-new-tokens', { int: true, min: 0 }),
          lengthPenalty: num(v['length-penalty'], 'length-penalty'),
          earlyStopping: Boolean(v['early-stopping']),
        });
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
      'gpt2-webgpu bench [--model random:gpt2] [--batch 1,4,16,64] [--prompt-tokens P] [--new-tokens N] [--repeat R] [--f16] [--wait auto|sleep|spin] [--fuse-ln auto|on|off] [--gemv-reduce auto|split|workgroup] [--gemm-tile TX,TY,TM,TN,BK] [--gemv-max-m M] [--attention-wg N] [--attention-blocks auto|on|off] [--attention-subgroups auto|on|off] [--matmul-subgroups auto|on|off] [--pipeline-depth D] [--sessions] [--json]',
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
      'no-profile': { type: 'boolean', default: false, help: 'skip the per-kernel timestamp profile' },
      wait: {
        type: 'string',
        default: 'auto',
        help: 'how the host thread waits for the GPU: sleep (in 2 ms slices), spin (dawn.node polling), auto (sleep on CPU adapters)',
      },
      'fuse-ln': {
        type: 'string',
        default: 'auto',
        help: 'layer norm in the GPU GEMV prologue (gemv_kn_ln): on, off, auto (on GPUs)',
      },
      'gemv-max-m': {
        type: 'string',
        help: 'largest M (batch x tokens) the GEMV takes before the tiled GEMM (default 8 on GPUs; CPU adapters: always the GEMV)',
      },
      'gemm-tile': {
        type: 'string',
        help: 'the prefill GEMM tile: TX,TY threads of TM x TN outputs, BK deep (default 16,16,4,4,16)',
      },
      'gemv-reduce': {
        type: 'string',
        default: 'auto',
        help: 'how the GPU decode GEMV splits K: split (slices over workgroups + a reduce dispatch), workgroup (inside each workgroup, one dispatch), auto (workgroup on GPUs)',
      },
      'attention-wg': {
        type: 'string',
        help: 'threads per workgroup of the GPU decode attention: 32-256, a power of two, or 0 for the 32-thread prefill kernel (default 256 on GPUs; CPU adapters decode with one invocation per head)',
      },
      'attention-blocks': {
        type: 'string',
        default: 'auto',
        help: "prompts of 64+ tokens as matrix products through scratch buffers ('blocks', CPU adapters without the subgroup attention): on, off (token pairs at every length), auto (on CPU adapters without subgroups or with --attention-subgroups off)",
      },
      'attention-subgroups': {
        type: 'string',
        default: 'auto',
        help: "attention with a subgroup per (query or block of 8 prompt tokens, head) ('subgroup', CPU adapters with subgroups of 4+ invocations): on, off (decode: one invocation per (row, head); prompts: token pairs or 'blocks'), auto (where available)",
      },
      'matmul-subgroups': {
        type: 'string',
        default: 'auto',
        help: "matmuls of 8+ rows (prompts, batches) through subgroup broadcasts ('subgroups', CPU adapters with 4- or 8-lane subgroups): on, off (gemv_kn_cols), auto (where available)",
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
      // An auto|on|off flag: undefined (the kernel's default), true or false.
      const onOff = (flag: string): boolean | undefined => {
        const modes = { auto: undefined, on: true, off: false } as const;
        const m = String(v[flag]);
        if (!Object.hasOwn(modes, m)) throw new UsageError(`--${flag} must be auto, on or off, got "${m}"`);
        return modes[m as keyof typeof modes];
      };
      const fuseLn = onOff('fuse-ln');
      const attentionBlocks = onOff('attention-blocks');
      const attentionSubgroups = onOff('attention-subgroups');
      const knSubgroups = onOff('matmul-subgroups');
      const reduces = { auto: undefined, split: 'split', workgroup: 'workgroup' } as const;
      if (!Object.hasOwn(reduces, String(v['gemv-reduce'])))
        throw new UsageError(`--gemv-reduce must be auto, split or workgroup, got "${String(v['gemv-reduce'])}"`);
      let gemmTile: GemmTile | undefined;
      if (v['gemm-tile'] !== undefined) {
        const parts = String(v['gemm-tile']).split(',');
        if (parts.length !== 5)
          throw new UsageError(
            `--gemm-tile takes 5 comma-separated integers TX,TY,TM,TN,BK, got "${String(v['gemm-tile'])}"`,
          );
        const [tx, ty, tm, tn, bk] = parts.map((s) => num(s, 'gemm-tile', { int: true, min: 1 }));
        gemmTile = { tx: tx!, ty: ty!, tm: tm!, tn: tn!, bk: bk! };
      }
      const engine = await createEngine({ yieldWhileWaiting: waits[String(v.wait) as keyof typeof waits] });
      try {
        const report = await runBench(engine, {
          model: String(v.model),
          dtype: v.f16 ? 'f16' : 'f32',
          batches,
          promptTokens: num(v['prompt-tokens'], 'prompt-tokens', { int: true, min: 1 }),
          newTokens: num(v['new-tokens'], 'new-tokens', { int: true, min: 1 }),
          repeat: num(v.repeat, 'repeat', { int: true, min: 1 }),
          profile: !v['no-profile'],
          fuseLn,
          gemvReduce: reduces[String(v['gemv-reduce']) as keyof typeof reduces],
          gemmTile,
          gemvMaxM:
            v['gemv-max-m'] === undefined ? undefined : num(v['gemv-max-m'], 'gemv-max-m', { int: true, min: 0 }),
          attentionWg: attentionWg(v['attention-wg']),
          attentionBlocks,
          knSubgroups,
          attentionSubgroups,
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
};

/** --attention-wg: unset, 0, or a power of two in [32, 256]. */
function attentionWg(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const n = num(v, 'attention-wg', { int: true, min: 0, max: 256 });
  if (n !== 0 && !isPowerOfTwoIn(n, 32, 256))
    throw new UsageError(`--attention-wg must be 0 or a power of two in [32, 256], got ${n}`);
  return n;
}

function helpText(name: string, c: Command): string {
  const lines = [`${c.usage}`, '', c.summary, '', 'options:'];
  for (const [k, f] of Object.entries(c.flags)) {
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
  const cmd = commands[name];
  if (!cmd) {
    console.error(`unknown command "${name}"\n\n${mainHelp()}`);
    return 2;
  }
  let values: Record<string, string | boolean | undefined>;
  try {
    const options: ParseArgsConfig['options'] = { help: { type: 'boolean' } };
    for (const [k, f] of Object.entries(cmd.flags))
      options[k] = { type: f.type, ...(f.default !== undefined ? { default: f.default } : {}) };
    values = parseArgs({ args: rest, options, strict: true, allowPositionals: false }).values as Record<
      string,
      string | boolean | undefined
    >;
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${helpText(name, cmd)}`);
    return 2;
  }
  if (values.help) {
    console.log(helpText(name, cmd));
    return 0;
  }
  try {
    await cmd.run(values);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`${e.message}\n\n${helpText(name, cmd)}`);
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
