/**
 * The benchmark harness behind `gpt2-webgpu bench`: load time, prefill, decode ms/token (median
 * and p90 over runs), tokens/s, read-back bytes, dispatches and submits per step, for each batch
 * size, plus a per-kernel-family GPU time table from timestamp queries when the adapter has them.
 */
import type { DeviceProfile, Engine, Model, PartialProfile, SessionGroup } from './engine/engine.js';
import type { LoadProgress } from './engine/engine-options.js';
import { generationCapacity } from './engine/generate.js';
import { timeDecodeStep } from './engine/step-timing.js';
import { InvalidOptionError } from './errors.js';
import type { WeightDType } from './engine/weights.js';

export interface BenchOptions {
  model: string;
  dtype: WeightDType;
  /** The KV caches' storage (LoadOptions.kvDtype); default 'f32'. */
  kvDtype?: 'f32' | 'f16';
  batches: number[];
  promptTokens: number;
  newTokens: number;
  repeat: number;
  /** Whether to time one decode step per kernel with timestamp queries (BatchResult.kernels). */
  timings: boolean;
  /** A partial device profile merged over the adapter's (kernel choices to compare); default: the adapter's own. */
  profile?: PartialProfile;
  /** GenerateOptions.pipelineDepth (decode steps in flight); default: the profile's (1 CPU, 3 GPU). */
  pipelineDepth?: number;
  /** Also time B conversations as B separate sessions and as one session group (BatchResult.sessions). */
  sessions?: boolean;
  onProgress?: (p: LoadProgress) => void;
}

export interface KernelTime {
  name: string;
  ms: number;
  dispatches: number;
}

export interface BatchResult {
  batch: number;
  load_ms: number;
  /** From the generate call to the first ids on the CPU: setup_ms + prefill_ms. */
  first_token_ms: number;
  /** Host work before the prompt's submit (temporary cache, sampler state, plans and bind groups). */
  setup_ms: number;
  /** The prompt's submit to its first ids on the CPU (GPU prefill, sampling, 4-byte read-back). */
  prefill_ms: number;
  /** null with --new-tokens 1 (prefill only: no decode step ran); see decode_note. */
  decode_ms_per_token: number | null;
  decode_ms_per_token_p90: number | null;
  tokens_per_s: number | null;
  decode_note?: string;
  readback_bytes_per_token: number;
  /** GPU memory of the generation's KV cache: B rows x its capacity, K and V of every layer, in the report's kv_dtype. */
  kv_cache_bytes: number;
  /** Per decode step; null with --new-tokens 1. */
  dispatches_per_token: number | null;
  submits_per_token: number | null;
  kernels: KernelTime[] | null;
  /**
   * The same step by operation, summed over layers (dispatch labels without their `h.<layer>.`
   * prefix and chunk index: `attn.c_attn`, `attn.c_attn.reduce`, `attn`, `mlp.c_fc`, `lm_head`...),
   * slowest first; null when `kernels` is.
   */
  kernels_by_op: KernelTime[] | null;
  kernels_note?: string;
  /** With --sessions: B conversations of different histories, one turn of N new tokens each. */
  sessions?: SessionsResult;
}

/**
 * B conversations (session i: a P-token prompt rotated by i, plus one sampled token), then one
 * timed turn each: one more token appended and N new tokens generated. Turn times are medians over
 * the runs, from the first call to the last result (set-up and the turn's prefill included);
 * tokens/s = B x N / turn time.
 */
export interface SessionsResult {
  /** B separate sessions (a KV cache each) generating at the same time: their steps interleave. */
  separate_turn_ms: number;
  separate_tokens_per_s: number;
  /** One session group of B advancing the same turns together: one batched step per token. */
  group_turn_ms: number;
  group_tokens_per_s: number;
  /**
   * The group turn's host set-up and first-token latency (medians of its stats): a follow-up turn,
   * whose plans the group kept from the turn before (GenerateStats.setup_ms / first_token_ms).
   */
  group_setup_ms: number;
  group_first_token_ms: number;
}

export interface BenchReport {
  date: string;
  model: string;
  dtype: string;
  /** What the KV caches store (BenchOptions.kvDtype). */
  kv_dtype: string;
  config: Record<string, number>;
  adapter: unknown;
  /** How the host thread waited for the GPU: 'sleep' (in slices, see WaitYield) or 'spin'. */
  host_wait: 'sleep' | 'spin';
  /** The device profile the run used: every kernel choice (the adapter's, with BenchOptions.profile merged over it). */
  profile: DeviceProfile;
  /** BenchOptions.profile as given (null: the adapter's profile as is). */
  profile_overrides: PartialProfile | null;
  /** The attention kernel of decode steps: 'subgroup' (CPU adapters with subgroups: 4 invocations per row and head), 'lanes' (other CPU adapters: one), 'wide' (GPUs), 'query' (32-thread workgroups). */
  attention_decode: string;
  /** The attention kernel of the prompt's prefill (P tokens of one row): 'tiled' (GPUs), 'subgroup' (CPU adapters with subgroups), 'blocks' (other CPU adapters, P >= 64), 'pairs' (them, below), 'query' or 'lanes' (one token). */
  attention_prompt: string;
  /** The kernel the prompt's per-layer matmuls take: 'gemm' / 'gemv' (GPUs), 'subgroups' / 'cols' (CPU adapters). */
  matmul_prompt: string;
  /** Decode steps queued ahead of the token read-back (GenerateOptions.pipelineDepth) as used. */
  pipeline_depth: number;
  /** Whether results carry `sessions` (--sessions). */
  sessions: boolean;
  prompt_tokens: number;
  new_tokens: number;
  repeat: number;
  load: { load_ms: number; resolve_ms: number; pipelines_ms: number; upload_ms: number; weight_bytes: number };
  results: Array<BatchResult | BatchFailure>;
}

/** A batch size the sweep could not measure, and why (the error's name and message). */
export interface BatchFailure {
  batch: number;
  error: string;
}

export const isBatchFailure = (r: BatchResult | BatchFailure): r is BatchFailure => 'error' in r;

const now = (): number => (globalThis.performance ?? Date).now();

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i]!;
}

/** The header's words for BenchReport.attention_decode ('wide' gives its width). */
const DECODE_ATTENTION: Record<string, string> = {
  lanes: 'one invocation per (row, head)',
  subgroup: 'a 4-invocation subgroup per (row, head)',
  query: '32-thread workgroups',
};

export async function runBench(engine: Engine, o: BenchOptions): Promise<BenchReport> {
  const t0 = now();
  // The source is resolved (and its config read) before any upload, so that a run the model's
  // window cannot hold fails at once, not after loading gigabytes.
  const ckpt = await engine.openSource(o.model, { onProgress: o.onProgress });
  const cfg = ckpt.config;
  // The last new token is sampled but never fed back, so P + N - 1 tokens go through the model.
  const fed = o.promptTokens + o.newTokens - 1;
  if (fed > cfg.n_positions) {
    throw new InvalidOptionError(
      `${fed} tokens go through the model (prompt-tokens ${o.promptTokens} + new-tokens ${o.newTokens} - 1, the last new token is not fed back), over its context window of ${cfg.n_positions}; ` +
        `use at most ${cfg.n_positions - o.newTokens + 1} prompt tokens (with --new-tokens 1 the prefill of a full window is timed alone)`,
    );
  }
  const resolveMs = now() - t0;
  const model = await engine.loadModel(ckpt, {
    dtype: o.dtype,
    kvDtype: o.kvDtype,
    onProgress: o.onProgress,
    experimental: { profile: o.profile },
  });
  model.loadTimes.resolveMs += resolveMs; // loadModel saw an opened checkpoint
  const loadMs = now() - t0;
  try {
    // A fixed pseudo-random prompt (ids spread over the vocabulary).
    const prompt = Array.from({ length: o.promptTokens }, (_, i) => (i * 7919 + 13) % (cfg.vocab_size - 1));
    const results: Array<BatchResult | BatchFailure> = [];
    for (const B of o.batches) {
      // A batch size that fails (a cache over the binding limit, out of memory) is reported in its
      // row and the sweep goes on; a lost device fails every later row the same way.
      try {
        results.push(await measureBatch(model, B, prompt, o, loadMs));
      } catch (e) {
        results.push({ batch: B, error: `${(e as Error)?.name ?? 'Error'}: ${(e as Error)?.message ?? String(e)}` });
      }
    }
    return {
      date: new Date().toISOString(),
      model: o.model,
      dtype: o.dtype,
      kv_dtype: model.kvDtype,
      config: {
        n_layer: cfg.n_layer,
        n_embd: cfg.n_embd,
        n_head: cfg.n_head,
        vocab_size: cfg.vocab_size,
        n_positions: cfg.n_positions,
      },
      adapter: model.ctx.adapter,
      host_wait: model.ctx.waitYield ? 'sleep' : 'spin',
      profile: model.profile,
      profile_overrides: o.profile ?? null,
      attention_decode: model.decodeAttention(),
      attention_prompt: model.promptAttention(o.promptTokens),
      matmul_prompt: model.promptMatmul(o.promptTokens),
      pipeline_depth: o.pipelineDepth ?? model.profile.pipelineDepth,
      sessions: o.sessions === true,
      prompt_tokens: o.promptTokens,
      new_tokens: o.newTokens,
      repeat: o.repeat,
      load: {
        load_ms: loadMs,
        resolve_ms: model.loadTimes.resolveMs,
        pipelines_ms: model.loadTimes.pipelinesMs,
        upload_ms: model.loadTimes.uploadMs,
        weight_bytes: model.weights.bytes,
      },
      results,
    };
  } finally {
    model.destroy();
  }
}

/** One row of the report: R timed generations of B sequences (after a warm-up), then the profile. */
async function measureBatch(
  model: Model,
  B: number,
  prompt: number[],
  o: BenchOptions,
  loadMs: number,
): Promise<BatchResult> {
  const gen = (maxNewTokens: number, seed: number) =>
    model.generate(prompt, {
      numSequences: B,
      maxNewTokens,
      temperature: 1,
      seed,
      stopAtEos: false,
      pipelineDepth: o.pipelineDepth,
    });
  await gen(Math.min(2, o.newTokens), 1); // warm-up
  const runs = [];
  for (let r = 0; r < o.repeat; r++) runs.push(await gen(o.newTokens, 1234));
  const decode = runs.map((r) => r.stats.decodeMsPerToken);
  const st = runs[runs.length - 1]!.stats;
  const med = quantile(decode, 0.5);
  const decoded = o.newTokens > 1;
  let profile: { families: KernelTime[]; ops: KernelTime[] } | null = null;
  let note: string | undefined;
  if (!o.timings) note = 'profiling skipped (--no-profile)';
  else if (!model.ctx.features.timestampQuery) note = 'not available: the adapter has no timestamp-query feature';
  else profile = await kernelTimes(model, B, o.promptTokens, o.promptTokens + o.newTokens);
  const sessions = o.sessions ? await measureSessions(model, B, prompt, o) : undefined;
  return {
    batch: B,
    load_ms: loadMs,
    first_token_ms: quantile(
      runs.map((r) => r.stats.firstTokenMs),
      0.5,
    ),
    setup_ms: quantile(
      runs.map((r) => r.stats.setupMs),
      0.5,
    ),
    prefill_ms: quantile(
      runs.map((r) => r.stats.prefillMs),
      0.5,
    ),
    decode_ms_per_token: decoded ? med : null,
    decode_ms_per_token_p90: decoded ? quantile(decode, 0.9) : null,
    tokens_per_s: decoded ? (1000 * B) / med : null,
    ...(decoded ? {} : { decode_note: 'no decode steps (--new-tokens 1): prefill only' }),
    readback_bytes_per_token: st.readbackBytesPerToken,
    // the cache generate makes for itself: P + N slots, as it sizes them
    kv_cache_bytes: model.cacheBytes(B, generationCapacity(model.config, prompt.length + o.newTokens, false)),
    dispatches_per_token: decoded ? st.dispatchesPerStep : null,
    submits_per_token: decoded ? st.submitsPerStep : null,
    kernels: profile?.families ?? null,
    kernels_by_op: profile?.ops ?? null,
    ...(note ? { kernels_note: note } : {}),
    ...(sessions ? { sessions } : {}),
  };
}

/** SessionsResult for B conversations: separate sessions and one group, alternated per run. */
async function measureSessions(model: Model, B: number, prompt: number[], o: BenchOptions): Promise<SessionsResult> {
  const P = prompt.length;
  const N = o.newTokens;
  // Slots for the whole exchange (P + 1 sampled + 1 appended + N - 1 fed back), as a generation sizes its own.
  const capacity = generationCapacity(model.config, P + N + 1, false);
  const histories = Array.from({ length: B }, (_, i) => [...prompt.slice(i % P), ...prompt.slice(0, i % P)]);
  const opts = (i: number, maxNewTokens: number) => ({
    temperature: 1,
    seed: 1000 + i,
    maxNewTokens,
    stopAtEos: false,
    pipelineDepth: o.pipelineDepth,
  });
  const separate = await Promise.all(histories.map(() => model.createSession({ capacity })));
  let group: SessionGroup | undefined;
  try {
    group = await model.createSessionGroup(B, { capacity });
    const g = group;
    const times = { separate: [] as number[], group: [] as number[], setup: [] as number[], first: [] as number[] };
    // Run 0 warms up (compiles nothing new, but lets the caches' first use settle); 1..repeat are timed.
    for (let run = 0; run <= o.repeat; run++) {
      for (const s of [...separate, ...g.sessions]) s.reset();
      await Promise.all(separate.map((s, i) => s.generate(histories[i]!, opts(i, 1))));
      await g.generate(
        g.sessions.map((s, i) => ({ session: s, prompt: histories[i]! })),
        opts(0, 1),
      );
      let t = now();
      await Promise.all(separate.map((s, i) => s.generate([i + 1], opts(i, N))));
      if (run > 0) times.separate.push(now() - t);
      t = now();
      const turn = await g.generate(
        g.sessions.map((s, i) => ({ session: s, prompt: [i + 1] })),
        opts(0, N),
      );
      if (run > 0) {
        times.group.push(now() - t);
        times.setup.push(turn.stats.setupMs);
        times.first.push(turn.stats.firstTokenMs);
      }
    }
    const sep = quantile(times.separate, 0.5);
    const grp = quantile(times.group, 0.5);
    return {
      separate_turn_ms: sep,
      separate_tokens_per_s: (1000 * B * N) / sep,
      group_turn_ms: grp,
      group_tokens_per_s: (1000 * B * N) / grp,
      group_setup_ms: quantile(times.setup, 0.5),
      group_first_token_ms: quantile(times.first, 0.5),
    };
  } finally {
    for (const s of separate) s.destroy();
    group?.destroy();
  }
}

/**
 * GPU time per kernel family and per operation for one decode step of B rows (timeDecodeStep: each
 * dispatch in its own timed pass, so the sum exceeds a real step; the split is what it is for).
 */
async function kernelTimes(
  model: Model,
  B: number,
  promptTokens: number,
  need: number,
): Promise<{ families: KernelTime[]; ops: KernelTime[] }> {
  const totals = new Map<string, KernelTime>(); // by family
  const ops = new Map<string, KernelTime>(); // by operation (opName)
  for (const d of await timeDecodeStep(model, B, promptTokens, need)) {
    for (const [map, key] of [
      [totals, d.family],
      [ops, opName(d.label)],
    ] as const) {
      const t = map.get(key) ?? { name: key, ms: 0, dispatches: 0 };
      t.ms += d.ms;
      t.dispatches++;
      map.set(key, t);
    }
  }
  const slowestFirst = (m: Map<string, KernelTime>) => [...m.values()].sort((a, b) => b.ms - a.ms);
  return { families: slowestFirst(totals), ops: slowestFirst(ops) };
}

/** A dispatch label as an operation: without the layer prefix `h.<l>.` and a chunk index `[i]`. */
export function opName(label: string): string {
  return label.replace(/^h\.\d+\./, '').replace(/\[\d+\]/g, '');
}

/** The profile's fields as `a.b=v` words, one line per part (the report's header). */
export function profileLines(p: DeviceProfile): string[] {
  const words = (o: object, pre: string) =>
    Object.entries(o).map(
      ([k, v]) => `${pre}${k}=${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`,
    );
  const { matmul, attention, name: _name, ...rest } = p;
  return [words(matmul, 'matmul.').join(' '), words(attention, 'attention.').join(' '), words(rest, '').join(' ')];
}

export function formatBench(r: BenchReport): string {
  const a = r.adapter as { description?: string; vendor?: string };
  const lines = [
    `model ${r.model} (${r.dtype}, KV cache ${r.kv_dtype}), adapter: ${a.description || a.vendor}; prompt ${r.prompt_tokens} tokens, ${r.new_tokens} new, ${r.repeat} runs; host waits: ${r.host_wait}; decode attention: ${DECODE_ATTENTION[r.attention_decode] ?? (r.attention_decode === 'wide' ? `${r.profile.attention.decodeWg}-thread workgroups` : r.attention_decode)}; prompt attention: ${r.attention_prompt}; prompt matmul: ${r.matmul_prompt}; steps in flight: ${r.pipeline_depth}`,
    `profile ${r.profile.name}${r.profile_overrides ? ` with ${JSON.stringify(r.profile_overrides)} merged over it` : " (the adapter's)"}:`,
    ...profileLines(r.profile).map((l) => `  ${l}`),
    `load ${r.load.load_ms.toFixed(0)} ms (pipelines ${r.load.pipelines_ms.toFixed(0)} ms, upload ${r.load.upload_ms.toFixed(0)} ms, ${(r.load.weight_bytes / 1e6).toFixed(0)} MB of weights)`,
    '',
    'batch  first-token ms (setup + prefill)  decode ms/token (median / p90)  tokens/s  readback B/token  dispatches/step  submits/step  KV cache MB',
  ];
  const fix = (v: number | null, d: number) => (v === null ? '-' : v.toFixed(d));
  for (const x of r.results) {
    if (isBatchFailure(x)) {
      lines.push(`${String(x.batch).padStart(5)}  failed: ${x.error}`);
      continue;
    }
    lines.push(
      `${String(x.batch).padStart(5)}  ${`${x.first_token_ms.toFixed(1)} (${x.setup_ms.toFixed(1)} + ${x.prefill_ms.toFixed(1)})`.padStart(32)}  ${fix(x.decode_ms_per_token, 2).padStart(15)} / ${fix(x.decode_ms_per_token_p90, 2).padEnd(13)}  ${fix(x.tokens_per_s, 1).padStart(8)}  ${String(x.readback_bytes_per_token).padStart(16)}  ${fix(x.dispatches_per_token, 0).padStart(15)}  ${fix(x.submits_per_token, 2).padStart(12)}  ${(x.kv_cache_bytes / 1e6).toFixed(1).padStart(11)}`,
    );
  }
  if (r.new_tokens === 1) lines.push('(--new-tokens 1: prefill only, no decode step measured)');
  if (r.sessions) {
    lines.push(
      '',
      `sessions: B conversations, one turn of ${r.new_tokens} new tokens each (turn ms, tokens/s)`,
      'batch  separate sessions at once      one session group',
    );
    for (const x of r.results) {
      if (isBatchFailure(x) || !x.sessions) continue;
      const s = x.sessions;
      lines.push(
        `${String(x.batch).padStart(5)}  ${`${s.separate_turn_ms.toFixed(0)} ms, ${s.separate_tokens_per_s.toFixed(1)}/s`.padEnd(28)}  ${s.group_turn_ms.toFixed(0)} ms, ${s.group_tokens_per_s.toFixed(1)}/s (first token ${s.group_first_token_ms.toFixed(1)} ms, set-up ${s.group_setup_ms.toFixed(1)})`,
      );
    }
  }
  for (const x of r.results) {
    if (isBatchFailure(x)) continue;
    lines.push('', `kernels, batch ${x.batch} (GPU ms per decode step):`);
    if (!x.kernels) lines.push(`  ${x.kernels_note}`);
    else {
      for (const k of x.kernels)
        lines.push(`  ${k.name.padEnd(12)} ${k.ms.toFixed(3).padStart(9)} ms  (${k.dispatches} dispatches)`);
      lines.push('  by operation (summed over layers):');
      for (const k of x.kernels_by_op ?? [])
        lines.push(`    ${k.name.padEnd(24)} ${k.ms.toFixed(3).padStart(9)} ms  (${k.dispatches})`);
    }
  }
  return lines.join('\n');
}
