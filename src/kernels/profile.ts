/**
 * The device profile: every kernel choice the engine makes per adapter, in one typed record chosen
 * once per GpuContext (deviceProfile). Kernels take their part of it and build exactly the
 * pipelines it names; nothing else in the engine asks what kind of adapter it runs on.
 *
 * Four built-in profiles, by what the adapter is:
 *   'gpu'            a real GPU: memory bandwidth wants many threads in flight and coalesced loads;
 *                    workgroup barriers and workgroup memory are cheap.
 *   'cpu'            a CPU adapter (fallback or software: lavapipe, SwiftShader, WARP) without
 *                    subgroups: a workgroup's invocations are SIMD lanes, a lane-varying load is a
 *                    gather, a barrier turns the shader into coroutines; so one invocation owns a
 *                    whole row, head or block of columns, and nothing synchronises.
 *   'cpu-subgroups'  a CPU adapter with 8-lane subgroups (lavapipe): as 'cpu', but where the lanes
 *                    of a subgroup can share loads by broadcast or sum by subgroupAdd, they do.
 *   'swiftshader'    a CPU adapter with 4-lane subgroups (SwiftShader, Chromium's fallback
 *                    adapter): 'cpu-subgroups' at 4 lanes.
 * A CPU adapter whose single subgroup size is another one of at least 4 gets 'cpu-subgroups' with
 * the subgroup matmul off (gemm_kn_sg runs 4 or 8 lanes only).
 *
 * Why each choice is what it is, per op:
 *   matmul    GPUs: gemv_kn (a thread per 16-byte word of W, K split inside 256-thread workgroups
 *             for narrow outputs, the layer norm in its prologue) up to 8 rows, the 64 x 64 tiled
 *             GEMM past them. CPU adapters: gemv_kn_cols at every M (a thread per 32 columns, so
 *             one x load feeds several W loads; a tile through workgroup memory costs a per-lane
 *             load per element there), weights in 256-column panels so a workgroup streams one
 *             contiguous block; with subgroups, gemm_kn_sg from 8 rows (x shared by broadcast).
 *   layernorm one kernel, a workgroup per row everywhere, of layernormWg threads: 256 on GPUs
 *             (where the decode GEMV's prologue does it instead: matmul.fuseLn); 8 on CPU
 *             adapters, one SIMD vector, whose barriers cost next to nothing (at 256, a row's
 *             workgroup runs as 32 coroutines switching at every barrier).
 *   attention GPUs: decode in 256-thread workgroups (few (row, head) pairs, each hiding its own
 *             latency), prompts in tiles of 8 tokens through workgroup memory. CPU adapters: an
 *             invocation per (token, head) for decode, token pairs sharing K/V loads for prompts,
 *             prompts of 64+ tokens as matrix products ('blocks'); with subgroups, decode takes a
 *             4-invocation subgroup per (token, head) (the dot products through subgroupAdd) and
 *             prompts a subgroup per block of 8 (SwiftShader: 4) tokens, which shares each K/V load.
 *   logprobs  GPUs: 256 threads per row; CPU adapters: 8 (each of the top-N rounds' barriers splits
 *             the shader into coroutines there).
 *   engine    GPUs queue 3 decode steps ahead of the token read-back (the GPU never idles for the
 *             host) and build prompt plans for power-of-two buckets (extra tokens cost next to
 *             nothing); CPU adapters run one step at a time (the host thread needs the cores the
 *             "GPU" runs on) and build plans for the exact prompt (every token costs compute).
 * Measurements behind these are in BENCHMARKS.md's decision log.
 */
import type { GpuContext } from '../gpu/device.js';
import { InvalidOptionError } from '../errors.js';
import { isPowerOfTwoIn } from '../gpu/common.js';
import { checkMatmulProfile, GEMM_TILE, GEMV_MAX_M, type MatmulProfile } from './matmul.js';
import { checkAttentionProfile, type AttentionProfile } from './attention.js';

export type { MatmulProfile } from './matmul.js';
export type { AttentionProfile } from './attention.js';

export type ProfileName = 'gpu' | 'cpu' | 'cpu-subgroups' | 'swiftshader';

export interface DeviceProfile {
  /** The built-in profile it is, or was derived from (a partial profile merged over it keeps the name). */
  name: ProfileName;
  matmul: MatmulProfile;
  attention: AttentionProfile;
  /** Decode steps queued ahead of the token read-back when GenerateOptions.pipelineDepth is not given, 1-16. */
  pipelineDepth: number;
  /** Whether sessions build prompt plans for power-of-two token counts (LoadOptions.promptBuckets' default). */
  promptBuckets: boolean;
  /** Threads per row of the logprobs kernel (scoring, generation log-probs): a power of two, 1-256. */
  logprobsWg: number;
  /** Threads per row (one workgroup) of the layer-norm kernel: a power of two, 1-256. */
  layernormWg: number;
}

/**
 * A partial profile (a bench --profile file, ModelLoadOptions.experimental.profile): `name` picks
 * the built-in profile to start from (default: the adapter's), the other fields replace its own;
 * matmul and attention field by field.
 */
export interface PartialProfile {
  name?: ProfileName;
  matmul?: Partial<MatmulProfile>;
  attention?: Partial<AttentionProfile>;
  pipelineDepth?: number;
  promptBuckets?: boolean;
  logprobsWg?: number;
  layernormWg?: number;
}

const CPU: DeviceProfile = {
  name: 'cpu',
  matmul: {
    gemv: 'cols',
    splitK: 'split',
    fuseLn: false,
    gemvMaxM: null,
    gemmTile: GEMM_TILE,
    subgroupLanes: 0,
    panel: 256,
  },
  attention: { decode: 'lanes', prompt: 'blocks', decodeWg: 256, subgroupLanes: 8 },
  pipelineDepth: 1,
  promptBuckets: false,
  logprobsWg: 8,
  layernormWg: 8,
};

const CPU_SUBGROUPS: DeviceProfile = {
  ...CPU,
  name: 'cpu-subgroups',
  matmul: { ...CPU.matmul, subgroupLanes: 8 },
  attention: { ...CPU.attention, decode: 'subgroup', prompt: 'subgroup', subgroupLanes: 8 },
};

/** The built-in profiles (frozen: copy before changing). */
export const PROFILES: Readonly<Record<ProfileName, Readonly<DeviceProfile>>> = deepFreeze({
  gpu: {
    name: 'gpu',
    matmul: {
      gemv: 'threads',
      splitK: 'workgroup',
      fuseLn: true,
      gemvMaxM: GEMV_MAX_M,
      gemmTile: GEMM_TILE,
      subgroupLanes: 0,
      panel: 0,
    },
    attention: { decode: 'wide', prompt: 'tiled', decodeWg: 256, subgroupLanes: 8 },
    pipelineDepth: 3,
    promptBuckets: true,
    logprobsWg: 256,
    layernormWg: 256,
  },
  cpu: CPU,
  'cpu-subgroups': CPU_SUBGROUPS,
  swiftshader: {
    ...CPU_SUBGROUPS,
    name: 'swiftshader',
    matmul: { ...CPU_SUBGROUPS.matmul, subgroupLanes: 4 },
    attention: { ...CPU_SUBGROUPS.attention, subgroupLanes: 4 },
  },
});

export const PROFILE_NAMES = Object.keys(PROFILES) as ProfileName[];

function deepFreeze<T>(o: T): T {
  if (typeof o === 'object' && o !== null) {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/** A mutable deep copy of a profile. */
function copy(p: Readonly<DeviceProfile>): DeviceProfile {
  return {
    ...p,
    matmul: { ...p.matmul, gemmTile: { ...p.matmul.gemmTile } },
    attention: { ...p.attention },
  };
}

/** The adapter's profile: what its kind and its subgroups allow (see the header). */
export function deviceProfile(ctx: GpuContext): DeviceProfile {
  if (!ctx.isCpuAdapter) return copy(PROFILES.gpu);
  const size = ctx.features.subgroups ? ctx.features.subgroupSize : null;
  if (size === 4) return copy(PROFILES.swiftshader);
  if (size === 8) return copy(PROFILES['cpu-subgroups']);
  if (size !== null && size > 8) {
    const p = copy(PROFILES['cpu-subgroups']);
    p.matmul.subgroupLanes = 0;
    return p;
  }
  return copy(PROFILES.cpu);
}

const FIELDS: Record<keyof DeviceProfile, string> = {
  name: `one of ${PROFILE_NAMES.join(', ')}`,
  matmul: 'an object of matmul fields',
  attention: 'an object of attention fields',
  pipelineDepth: 'an integer in [1, 16]',
  promptBuckets: 'a boolean',
  logprobsWg: 'a power of two in [1, 256]',
  layernormWg: 'a power of two in [1, 256]',
};

/** The fields of `o` that are not undefined (an undefined field is not given). */
function given<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Throws InvalidOptionError for a key of `o` that `known` lacks (a typo in a profile file must not pass silently). */
function checkKeys(o: object, known: object, where: string): void {
  for (const k of Object.keys(o)) {
    if (!Object.hasOwn(known, k))
      throw new InvalidOptionError(`${where}: unknown field "${k}"; the fields are ${Object.keys(known).join(', ')}`);
  }
}

/** Checks a whole profile against the kernels' bounds and the device; throws InvalidOptionError naming the field. */
export function checkProfile(ctx: GpuContext, p: DeviceProfile, where = 'profile'): void {
  if (!PROFILE_NAMES.includes(p.name))
    throw new InvalidOptionError(`${where}.name must be ${FIELDS.name}, got ${JSON.stringify(p.name)}`);
  checkKeys(p.matmul, PROFILES.gpu.matmul, `${where}.matmul`);
  checkMatmulProfile(ctx, p.matmul, `${where}.matmul`);
  checkKeys(p.attention, PROFILES.gpu.attention, `${where}.attention`);
  checkAttentionProfile(ctx, p.attention, `${where}.attention`);
  if (!(Number.isInteger(p.pipelineDepth) && p.pipelineDepth >= 1 && p.pipelineDepth <= 16))
    throw new InvalidOptionError(
      `${where}.pipelineDepth must be ${FIELDS.pipelineDepth}, got ${JSON.stringify(p.pipelineDepth)}`,
    );
  if (typeof p.promptBuckets !== 'boolean')
    throw new InvalidOptionError(
      `${where}.promptBuckets must be ${FIELDS.promptBuckets}, got ${JSON.stringify(p.promptBuckets)}`,
    );
  for (const k of ['logprobsWg', 'layernormWg'] as const) {
    const wg = p[k];
    if (!isPowerOfTwoIn(wg, 1, 256))
      throw new InvalidOptionError(`${where}.${k} must be ${FIELDS[k]}, got ${JSON.stringify(wg)}`);
    if (wg > ctx.limits.maxComputeInvocationsPerWorkgroup)
      throw new InvalidOptionError(
        `${where}.${k} ${wg} is over this device's maxComputeInvocationsPerWorkgroup (${ctx.limits.maxComputeInvocationsPerWorkgroup}); use a smaller power of two`,
      );
  }
}

/**
 * The profile a model runs: the adapter's (or the built-in `partial.name`) with `partial`'s fields
 * merged over it, checked against the device. Throws InvalidOptionError naming a bad or unknown
 * field, or a choice the device cannot run.
 */
export function resolveProfile(ctx: GpuContext, partial: PartialProfile = {}, where = 'profile'): DeviceProfile {
  if (typeof partial !== 'object' || partial === null || Array.isArray(partial))
    throw new InvalidOptionError(`${where} must be an object of profile fields, got ${JSON.stringify(partial)}`);
  checkKeys(partial, FIELDS, where);
  for (const k of ['matmul', 'attention'] as const) {
    const v = partial[k];
    if (v !== undefined && (typeof v !== 'object' || v === null || Array.isArray(v)))
      throw new InvalidOptionError(`${where}.${k} must be ${FIELDS[k]}, got ${JSON.stringify(v)}`);
  }
  if (partial.name !== undefined && !PROFILE_NAMES.includes(partial.name))
    throw new InvalidOptionError(`${where}.name must be ${FIELDS.name}, got ${JSON.stringify(partial.name)}`);
  const base = partial.name !== undefined ? copy(PROFILES[partial.name]) : deviceProfile(ctx);
  const p: DeviceProfile = {
    ...base,
    ...given(partial),
    name: base.name,
    matmul: { ...base.matmul, ...given(partial.matmul ?? {}) },
    attention: { ...base.attention, ...given(partial.attention ?? {}) },
  };
  checkProfile(ctx, p, where);
  return p;
}
