/**
 * Device acquisition and the per-device context every kernel and model shares.
 *
 * Core code never imports Node built-ins: the caller hands us a `GPU` object (`navigator.gpu` in a
 * browser, `nodeGPU()` from `src/node.ts` in Node). The context
 *   - requests the adapter's own maxima for the limits that matter for big weights,
 *   - records optional features (timestamp-query, shader-f16, subgroups) without requiring them,
 *   - tracks every buffer it creates (count and bytes) so tests can prove nothing leaks,
 *   - caches shader modules and compute pipelines (built once, specialised by override constants),
 *   - turns device loss into thrown, named errors, and keeps (unprinted) the GPU errors raised
 *     outside any error scope; each call's own errors come back to it through CallErrors.
 */
import {
  DeviceLostError,
  GPUValidationError,
  InvalidOptionError,
  OutOfMemoryError,
  WebGPUUnavailableError,
} from '../errors.js';
import { SHADERS } from '../shaders.gen.js';

export interface GpuFeatures {
  timestampQuery: boolean;
  shaderF16: boolean;
  subgroups: boolean;
  /**
   * The subgroup size where the device has `subgroups` and the adapter reports a single size
   * (subgroupMinSize == subgroupMaxSize: 8 on lavapipe, 4 on SwiftShader), else null: kernels that exchange
   * values between a fixed number of lanes need it to be exact.
   */
  subgroupSize: number | null;
}

/** What `info` prints: enough to compare results across machines. */
export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  isFallbackAdapter: boolean;
  features: string[];
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupSizeX: number;
    maxStorageBuffersPerShaderStage: number;
    maxComputeWorkgroupsPerDimension: number;
    minStorageBufferOffsetAlignment: number;
    minUniformBufferOffsetAlignment: number;
  };
}

export interface ContextOptions {
  powerPreference?: GPUPowerPreference;
  /** Ask for a fallback (software) adapter. */
  forceFallbackAdapter?: boolean;
  /** Do not request optional features even when present (to test the plain paths). */
  disableFeatures?: Array<'timestamp-query' | 'shader-f16' | 'subgroups'>;
  /**
   * How the host thread waits for the GPU (see `WaitYield`): given, it is used on CPU adapters
   * (`yieldWhileWaiting` 'auto', the default), always (true) or never (false). The Node entry
   * supplies one; browsers need none (their GPU process does the waiting).
   */
  waitYield?: WaitYield;
  yieldWhileWaiting?: boolean | 'auto';
}

/**
 * Called with every promise the context waits on the GPU for (read-backs, queue drains, pipeline
 * builds). dawn.node settles GPU promises by polling with setImmediate, so a Node process spins
 * one CPU core for as long as any of them is pending; on a software adapter (lavapipe) that core
 * is one the "GPU" itself needs. A WaitYield sleeps the thread in short slices while a wait is
 * pending (src/node.ts builds one on Atomics.wait), so the driver's threads get the cores.
 */
export type WaitYield = (pending: Promise<unknown>) => void;

const NO_ADAPTER_HINT =
  'WebGPU found no adapter. In Node this needs a Vulkan driver: on a machine without a GPU install ' +
  "Mesa's software Vulkan (lavapipe) with `bash scripts/install-vulkan-cpu.sh` (Debian 12: Mesa 25 from " +
  'bookworm-backports; the stock Mesa 22.3 is refused by Dawn). In Chromium, enable WebGPU (chrome://gpu; ' +
  'headless needs --enable-unsafe-webgpu).';

/** Uncaptured errors a context keeps (GpuContext.uncapturedErrors). */
const MAX_UNCAPTURED = 64;

export class GpuContext {
  readonly device: GPUDevice;
  readonly features: GpuFeatures;
  readonly adapter: AdapterSummary;
  /** Limits granted to the device (the adapter's maxima for the ones we request). */
  readonly limits: GPUSupportedLimits;
  /**
   * Errors the device raised outside any error scope, oldest first (the most recent
   * MAX_UNCAPTURED), drained by `throwIfErrors`. The engine's calls run their GPU work in error
   * scopes of their own (CallErrors), so what lands here is not theirs and is never thrown into
   * them. On a device the context created, they are not printed either (Dawn in Node would print
   * each to stdout).
   */
  readonly uncapturedErrors: GPUError[] = [];
  private lostInfo: GPUDeviceLostInfo | null = null;
  private destroyed = false;
  private readonly live = new Map<GPUBuffer, number>();
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly pipelines = new Map<string, Promise<GPUComputePipeline>>();
  /** Counters the benchmark and the read-back test look at. */
  readonly stats = { submits: 0, dispatches: 0, bytesReadBack: 0 };
  /** Set when GPU waits sleep the host thread in slices instead of letting it spin (see WaitYield). */
  readonly waitYield: WaitYield | null;
  private readonly onError = (ev: Event): void => {
    if (this.ownsDevice) ev.preventDefault();
    this.uncapturedErrors.push((ev as GPUUncapturedErrorEvent).error);
    if (this.uncapturedErrors.length > MAX_UNCAPTURED) this.uncapturedErrors.shift();
  };

  /**
   * `ownsDevice` false: a device the host application handed over (contextFromDevice), which
   * `destroy()` leaves alive.
   */
  constructor(
    device: GPUDevice,
    adapter: AdapterSummary,
    features: GpuFeatures,
    waitYield: WaitYield | null = null,
    readonly ownsDevice = true,
  ) {
    this.device = device;
    this.adapter = adapter;
    this.features = features;
    this.waitYield = waitYield;
    this.limits = device.limits;
    device.addEventListener('uncapturederror', this.onError);
    void device.lost.then((info) => {
      this.lostInfo = info;
    });
  }

  /** True once the device is lost or destroyed; every later GPU call throws DeviceLostError. */
  get isLost(): boolean {
    return this.lostInfo !== null || this.destroyed;
  }

  /** True on fallback / software adapters (lavapipe, SwiftShader), whose "GPU" is the CPU. */
  get isCpuAdapter(): boolean {
    return isCpuAdapter(this.adapter);
  }

  /** Every GPU wait goes through here, so the WaitYield (if any) sees it. Returns `p`. */
  wait<T>(p: Promise<T>): Promise<T> {
    this.waitYield?.(p);
    return p;
  }

  /** Waits until the GPU has finished everything submitted so far. */
  drain(): Promise<void> {
    return this.wait(this.device.queue.onSubmittedWorkDone());
  }

  /** Throws DeviceLostError if the device is gone. Cheap; call before recording work. */
  checkAlive(): void {
    if (this.lostInfo || this.destroyed) {
      const why = this.lostInfo ? `${this.lostInfo.reason}: ${this.lostInfo.message}` : 'destroyed';
      throw new DeviceLostError(`GPU device lost (${why}). Create a new engine to continue.`);
    }
  }

  /** Throws the first uncaptured GPU error (validation, out-of-memory, internal), if any was raised. */
  throwIfErrors(): void {
    if (this.uncapturedErrors.length === 0) return;
    const errs = this.uncapturedErrors.splice(0);
    const first = errs[0]!;
    const more = errs.length > 1 ? ` (and ${errs.length - 1} more)` : '';
    const msg = `GPU ${first.constructor?.name ?? 'error'}: ${first.message}${more}`;
    if (first.constructor?.name === 'GPUOutOfMemoryError') throw new OutOfMemoryError(msg);
    throw new GPUValidationError(msg);
  }

  /** Live buffers created through this context and their total size in bytes. */
  get liveBuffers(): { count: number; bytes: number } {
    let bytes = 0;
    for (const b of this.live.values()) bytes += b;
    return { count: this.live.size, bytes };
  }

  /** Creates a tracked buffer. Sizes are rounded up to 4 bytes (WebGPU requires it for copies). */
  createBuffer(label: string, size: number, usage: GPUBufferUsageFlags, mappedAtCreation = false): GPUBuffer {
    this.checkAlive();
    const bytes = Math.max(4, Math.ceil(size / 4) * 4);
    if (bytes > this.limits.maxBufferSize) {
      throw new OutOfMemoryError(
        `buffer "${label}" needs ${bytes} bytes but the adapter's maxBufferSize is ${this.limits.maxBufferSize}`,
      );
    }
    const buf = this.device.createBuffer({ label, size: bytes, usage, mappedAtCreation });
    this.live.set(buf, bytes);
    return buf;
  }

  /** Creates a storage buffer and fills it from `data` (byte length rounded up to 4). */
  createBufferWithData(label: string, data: ArrayBufferView, usage: GPUBufferUsageFlags): GPUBuffer {
    const buf = this.createBuffer(label, data.byteLength, usage, true);
    new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    buf.unmap();
    return buf;
  }

  /** Destroys a tracked buffer (idempotent). */
  destroyBuffer(buf: GPUBuffer | undefined | null): void {
    if (!buf) return;
    if (this.live.delete(buf)) buf.destroy();
  }

  /** Shader module by file name under shaders/ (without .wgsl; "a+b" joins two files), compiled once per context. */
  shaderModule(name: string): GPUShaderModule {
    let m = this.modules.get(name);
    if (!m) {
      // 'a+b': shaders/a.wgsl followed by shaders/b.wgsl, their `enable` directives first (WGSL
      // wants them before any declaration). A part that needs an optional feature (subgroups)
      // extends a base file this way without making the base need it.
      const parts = name.split('+').map((part) => {
        const code = SHADERS[part];
        if (code === undefined) throw new Error(`no shader named "${part}" (shaders/${part}.wgsl)`);
        return code;
      });
      const enables: string[] = [];
      const bodies = parts.map((code) => code.replace(/^enable [^;]+;[ \t]*$/gm, (d) => (enables.push(d), '')));
      m = this.device.createShaderModule({ label: name, code: [...new Set(enables), ...bodies].join('\n') });
      this.modules.set(name, m);
    }
    return m;
  }

  /**
   * A compute pipeline for `shaders/<name>.wgsl`, entry `entryPoint`, specialised by WGSL override
   * constants. Built once per (context, name, entry, constants) with createComputePipelineAsync.
   */
  pipeline(name: string, entryPoint: string, constants: Record<string, number> = {}): Promise<GPUComputePipeline> {
    const key = `${name}:${entryPoint}:${JSON.stringify(Object.entries(constants).sort())}`;
    let p = this.pipelines.get(key);
    if (!p) {
      this.checkAlive();
      p = this.wait(
        this.device.createComputePipelineAsync({
          label: `${name}.${entryPoint}`,
          layout: 'auto',
          compute: { module: this.shaderModule(name), entryPoint, constants },
        }),
      );
      p.catch(() => this.pipelines.delete(key));
      this.pipelines.set(key, p);
    }
    return p;
  }

  /** Number of pipelines built so far (the "nothing compiled per token" test reads it). */
  get pipelineCount(): number {
    return this.pipelines.size;
  }

  /** Submits command buffers, counting submits. */
  submit(cmds: GPUCommandBuffer[]): void {
    this.checkAlive();
    this.device.queue.submit(cmds);
    this.stats.submits++;
  }

  /**
   * Reads `size` bytes at `offset` of `src` back to the CPU (debug and verification path; the decode
   * loop reads back only token ids). Rejects with DeviceLostError if the device is lost meanwhile.
   */
  async readBuffer(src: GPUBuffer, offset = 0, size = src.size - offset): Promise<ArrayBuffer> {
    this.checkAlive();
    const staging = this.createBuffer('readback', size, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    try {
      const enc = this.device.createCommandEncoder({ label: 'readback' });
      enc.copyBufferToBuffer(src, offset, staging, 0, Math.ceil(size / 4) * 4);
      this.submit([enc.finish()]);
      return await this.mapCopy(staging, size);
    } finally {
      this.destroyBuffer(staging);
    }
  }

  /** mapAsync(READ) that counts bytes and turns a lost device into DeviceLostError. */
  async mapRead(buf: GPUBuffer, countedBytes: number): Promise<void> {
    try {
      await Promise.race([
        this.wait(buf.mapAsync(GPUMapMode.READ)),
        this.device.lost.then((info) => {
          throw new DeviceLostError(`GPU device lost while reading back (${info.reason}: ${info.message})`);
        }),
      ]);
    } catch (e) {
      if (e instanceof DeviceLostError) throw e;
      // A destroyed device rejects pending maps before its `lost` promise settles: give it a moment.
      const info = await Promise.race([this.device.lost, new Promise<null>((r) => setTimeout(() => r(null), 100))]);
      if (info || this.isLost) {
        throw new DeviceLostError(
          `GPU device lost while reading back${info ? ` (${info.reason}: ${info.message})` : ''}`,
          { cause: e },
        );
      }
      throw new GPUValidationError(`mapAsync failed: ${(e as Error).message}`, { cause: e });
    }
    this.stats.bytesReadBack += countedBytes;
  }

  /**
   * Maps a MAP_READ staging buffer (the one a step just copied into), copies its first `bytes` out
   * and unmaps it, so the buffer can be reused by the next step. Counts the bytes read back.
   */
  async mapCopy(buf: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    await this.mapRead(buf, bytes);
    const out = buf.getMappedRange(0, Math.ceil(bytes / 4) * 4).slice(0, bytes);
    buf.unmap();
    return out;
  }

  /** Destroys every tracked buffer, and the device when this context created it. */
  destroy(): void {
    if (this.destroyed) return;
    for (const b of this.live.keys()) b.destroy();
    this.live.clear();
    this.destroyed = true;
    this.device.removeEventListener('uncapturederror', this.onError);
    if (this.ownsDevice) this.device.destroy();
  }
}

/** Fallback / software adapters (lavapipe, SwiftShader): the "GPU" is the CPU. */
function isCpuAdapter(a: AdapterSummary): boolean {
  return a.isFallbackAdapter || a.architecture === 'software';
}

/** The limits `info` and the benchmark report, as the device got them. */
function limitsOf(dl: GPUSupportedLimits): AdapterSummary['limits'] {
  return {
    maxStorageBufferBindingSize: dl.maxStorageBufferBindingSize,
    maxBufferSize: dl.maxBufferSize,
    maxComputeWorkgroupStorageSize: dl.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: dl.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: dl.maxComputeWorkgroupSizeX,
    maxStorageBuffersPerShaderStage: dl.maxStorageBuffersPerShaderStage,
    maxComputeWorkgroupsPerDimension: dl.maxComputeWorkgroupsPerDimension,
    minStorageBufferOffsetAlignment: dl.minStorageBufferOffsetAlignment,
    minUniformBufferOffsetAlignment: dl.minUniformBufferOffsetAlignment,
  };
}

/** The optional features the device has (and the engine uses only when present). */
function featuresOf(device: GPUDevice, info: Partial<GPUAdapterInfo> | undefined): GpuFeatures {
  const subgroups = device.features.has('subgroups');
  const sg = info as { subgroupMinSize?: number; subgroupMaxSize?: number } | undefined;
  const min = sg?.subgroupMinSize;
  return {
    timestampQuery: device.features.has('timestamp-query'),
    shaderF16: device.features.has('shader-f16'),
    subgroups,
    subgroupSize: subgroups && Number.isInteger(min) && min! > 0 && min === sg?.subgroupMaxSize ? min! : null,
  };
}

/**
 * Acquires an adapter and device from `gpu` and wraps them in a GpuContext.
 * Throws WebGPUUnavailableError (with how to get an adapter) when there is none.
 */
export async function createContext(gpu: GPU | undefined | null, opts: ContextOptions = {}): Promise<GpuContext> {
  if (!gpu) throw new WebGPUUnavailableError(`WebGPU is not available in this environment. ${NO_ADAPTER_HINT}`);
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({
      powerPreference: opts.powerPreference ?? 'high-performance',
      forceFallbackAdapter: opts.forceFallbackAdapter ?? false,
    });
  } catch (e) {
    throw new WebGPUUnavailableError(`requestAdapter() failed: ${(e as Error).message}. ${NO_ADAPTER_HINT}`, {
      cause: e,
    });
  }
  if (!adapter) throw new WebGPUUnavailableError(NO_ADAPTER_HINT);

  const al = adapter.limits;
  const wanted: Record<string, number> = {
    maxStorageBufferBindingSize: al.maxStorageBufferBindingSize,
    maxBufferSize: al.maxBufferSize,
    maxComputeWorkgroupStorageSize: al.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: al.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: al.maxComputeWorkgroupSizeX,
    maxStorageBuffersPerShaderStage: al.maxStorageBuffersPerShaderStage,
    maxComputeWorkgroupsPerDimension: al.maxComputeWorkgroupsPerDimension,
  };
  const disabled = new Set(opts.disableFeatures ?? []);
  const optional: GPUFeatureName[] = (['timestamp-query', 'shader-f16', 'subgroups'] as GPUFeatureName[]).filter(
    (f) => adapter!.features.has(f) && !disabled.has(f as 'timestamp-query'),
  );
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ requiredFeatures: optional, requiredLimits: wanted, label: 'gpt2-webgpu' });
  } catch (e) {
    throw new WebGPUUnavailableError(`requestDevice() failed: ${(e as Error).message}. ${NO_ADAPTER_HINT}`, {
      cause: e,
    });
  }
  const info = adapter.info ?? ({} as GPUAdapterInfo);
  const summary: AdapterSummary = {
    vendor: info.vendor ?? '',
    architecture: info.architecture ?? '',
    device: info.device ?? '',
    description: info.description ?? '',
    isFallbackAdapter: Boolean(
      (info as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
      (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter,
    ),
    features: [...adapter.features].sort(),
    limits: limitsOf(device.limits),
  };
  let waitYield: WaitYield | null;
  try {
    waitYield = waitYieldFor(summary, opts);
  } catch (e) {
    device.destroy();
    throw e;
  }
  return new GpuContext(device, summary, featuresOf(device, info), waitYield);
}

/** The WaitYield a context uses: opts.waitYield where yieldWhileWaiting says so ('auto': CPU adapters). */
function waitYieldFor(
  summary: AdapterSummary,
  opts: Pick<ContextOptions, 'waitYield' | 'yieldWhileWaiting'>,
): WaitYield | null {
  const yieldMode = opts.yieldWhileWaiting ?? 'auto';
  if (yieldMode !== 'auto' && typeof yieldMode !== 'boolean') {
    throw new InvalidOptionError(`yieldWhileWaiting must be true, false or 'auto', got ${String(yieldMode)}`);
  }
  const use = opts.waitYield && (yieldMode === true || (yieldMode === 'auto' && isCpuAdapter(summary)));
  return use ? opts.waitYield! : null;
}

/**
 * Wraps a GPUDevice the host application already has (e.g. a page that renders with WebGPU).
 * Features and limits are read from the device; the adapter description from `info`, else from
 * `device.adapterInfo` where the implementation has it (then a CPU adapter is recognised as one,
 * for its kernel choices and, with opts.waitYield, its waits). The context never destroys this
 * device: `destroy()` frees what the engine created and leaves the device to its owner.
 */
export function contextFromDevice(
  device: GPUDevice,
  info: Partial<GPUAdapterInfo> = {},
  opts: Pick<ContextOptions, 'waitYield' | 'yieldWhileWaiting'> = {},
): GpuContext {
  const known = (device as { adapterInfo?: Partial<GPUAdapterInfo> & { isFallbackAdapter?: boolean } }).adapterInfo;
  const summary: AdapterSummary = {
    vendor: info.vendor ?? known?.vendor ?? '',
    architecture: info.architecture ?? known?.architecture ?? '',
    device: info.device ?? known?.device ?? '',
    description: info.description ?? (known?.description || 'host-provided device'),
    isFallbackAdapter: Boolean((info as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? known?.isFallbackAdapter),
    features: [...device.features].sort(),
    limits: limitsOf(device.limits),
  };
  // Field by field: GPUAdapterInfo's attributes are getters, which a spread would not copy.
  type SubgroupInfo = { subgroupMinSize?: number; subgroupMaxSize?: number };
  const sizes = {
    subgroupMinSize: (info as SubgroupInfo).subgroupMinSize ?? (known as SubgroupInfo | undefined)?.subgroupMinSize,
    subgroupMaxSize: (info as SubgroupInfo).subgroupMaxSize ?? (known as SubgroupInfo | undefined)?.subgroupMaxSize,
  };
  return new GpuContext(
    device,
    summary,
    featuresOf(device, sizes as Partial<GPUAdapterInfo>),
    waitYieldFor(summary, opts),
    false,
  );
}
