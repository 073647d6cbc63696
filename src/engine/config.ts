/**
 * GPT-2 model configuration: parsing and validating Hugging Face `config.json`, the known model
 * sizes, and the tensor names and shapes a checkpoint of a given config must hold.
 */
import { WeightsFormatError } from '../errors.js';
import { preview } from './safetensors.js';

/** The fields of HF's GPT2Config this engine uses (names as in config.json). */
export interface GPT2Config {
  vocab_size: number;
  n_positions: number;
  n_embd: number;
  n_layer: number;
  n_head: number;
  layer_norm_epsilon: number;
  /** 'gelu_new' or 'gelu_pytorch_tanh': both are the tanh approximation of GELU. */
  activation_function: 'gelu_new' | 'gelu_pytorch_tanh';
  bos_token_id: number;
  eos_token_id: number;
  /** MLP width; null/undefined means 4 * n_embd (the only width this engine accepts). */
  n_inner?: number | null;
}

const ACTIVATIONS = ['gelu_new', 'gelu_pytorch_tanh'] as const;

/**
 * Upper bounds on a config's sizes (sane integers, far above GPT-2's: 50257, 1024, 1600, 48, 25),
 * so that nothing computed from them (tensor lists, byte counts, loops over rows) runs away.
 */
export const CONFIG_LIMITS = {
  vocab_size: 1 << 20,
  n_positions: 1 << 16,
  n_embd: 1 << 15,
  n_layer: 1024,
  n_head: 1024,
} as const;

/** The largest config.json read (GPT-2's are under 1 KB; HF's with task parameters a few KB). */
export const MAX_CONFIG_BYTES = 1 << 20;

/** HF GPT2Config defaults for the fields a config.json may omit. */
const DEFAULTS = {
  layer_norm_epsilon: 1e-5,
  activation_function: 'gelu_new',
  bos_token_id: 50256,
  eos_token_id: 50256,
} as const;

function base(vocab: number, C: number, L: number, H: number): GPT2Config {
  return {
    vocab_size: vocab,
    n_positions: 1024,
    n_embd: C,
    n_layer: L,
    n_head: H,
    layer_norm_epsilon: 1e-5,
    activation_function: 'gelu_new',
    bos_token_id: 50256,
    eos_token_id: 50256,
    n_inner: null,
  };
}

/** The published GPT-2 family (values from their HF config.json files). */
export const KNOWN_MODELS: Readonly<
  Record<'gpt2' | 'gpt2-medium' | 'gpt2-large' | 'gpt2-xl' | 'distilgpt2', Readonly<GPT2Config>>
> = {
  gpt2: base(50257, 768, 12, 12),
  'gpt2-medium': base(50257, 1024, 24, 16),
  'gpt2-large': base(50257, 1280, 36, 20),
  'gpt2-xl': base(50257, 1600, 48, 25),
  distilgpt2: base(50257, 768, 6, 12),
};
export type KnownModel = keyof typeof KNOWN_MODELS;

/** Hugging Face repository of each known model (also in weights/manifest.json). */
export const HUB_REPOS: Readonly<Record<KnownModel, string>> = {
  gpt2: 'openai-community/gpt2',
  'gpt2-medium': 'openai-community/gpt2-medium',
  'gpt2-large': 'openai-community/gpt2-large',
  'gpt2-xl': 'openai-community/gpt2-xl',
  distilgpt2: 'distilbert/distilgpt2',
};

export function isKnownModel(name: string): name is KnownModel {
  return Object.prototype.hasOwnProperty.call(KNOWN_MODELS, name);
}

/**
 * Validates a parsed config.json and returns the fields we use. `where` names the file in messages.
 * Missing epsilon / activation / bos / eos / n_inner take HF's defaults; the sizes are required.
 * Options that change the math in ways this engine does not implement are rejected.
 */
export function parseConfig(json: unknown, where: string): GPT2Config {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new WeightsFormatError(
      `${where}: config must be a JSON object, got ${json === null ? 'null' : Array.isArray(json) ? 'an array' : typeof json}`,
    );
  }
  const o = json as Record<string, unknown>;
  const posInt = (key: string, dflt?: number): number => {
    const v = o[key] ?? dflt;
    if (v === undefined) throw new WeightsFormatError(`${where}: missing "${key}" (a positive integer)`);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      throw new WeightsFormatError(`${where}: "${key}" must be a positive integer, got ${preview(v)}`);
    }
    return v;
  };
  const tokenId = (key: 'bos_token_id' | 'eos_token_id', vocab: number): number => {
    const v = o[key] ?? DEFAULTS[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= vocab) {
      throw new WeightsFormatError(
        `${where}: "${key}" must be an integer in [0, vocab_size ${vocab}), got ${preview(v)}`,
      );
    }
    return v;
  };

  if (o.model_type !== undefined && o.model_type !== 'gpt2') {
    throw new WeightsFormatError(
      `${where}: model_type is ${preview(o.model_type)}; this engine runs only "gpt2" models`,
    );
  }
  const bounded = (key: keyof typeof CONFIG_LIMITS): number => {
    const v = posInt(key);
    if (v > CONFIG_LIMITS[key]) {
      throw new WeightsFormatError(
        `${where}: "${key}" is ${v}, past this engine's bound ${CONFIG_LIMITS[key]} (gpt2-xl has ${KNOWN_MODELS['gpt2-xl'][key]})`,
      );
    }
    return v;
  };
  const vocab_size = bounded('vocab_size');
  const n_positions = bounded('n_positions');
  const n_embd = bounded('n_embd');
  const n_layer = bounded('n_layer');
  const n_head = bounded('n_head');
  if (n_embd % n_head !== 0) {
    throw new WeightsFormatError(`${where}: n_embd ${n_embd} is not divisible by n_head ${n_head}`);
  }
  const eps = o.layer_norm_epsilon ?? DEFAULTS.layer_norm_epsilon;
  if (typeof eps !== 'number' || !(eps > 0) || !Number.isFinite(eps)) {
    throw new WeightsFormatError(`${where}: "layer_norm_epsilon" must be a number > 0, got ${preview(eps)}`);
  }
  const act = o.activation_function ?? DEFAULTS.activation_function;
  if (!ACTIVATIONS.includes(act as (typeof ACTIVATIONS)[number])) {
    throw new WeightsFormatError(
      `${where}: activation_function ${preview(act)} is not supported; this engine implements the tanh GELU ` +
        `("gelu_new" or "gelu_pytorch_tanh")`,
    );
  }
  const inner = o.n_inner;
  if (inner !== undefined && inner !== null && inner !== 4 * n_embd) {
    throw new WeightsFormatError(
      `${where}: n_inner ${preview(inner)} is not supported; only null or 4 * n_embd = ${4 * n_embd}`,
    );
  }
  // Variants that change the computation: refuse rather than compute something else.
  if (o.scale_attn_by_inverse_layer_idx === true) {
    throw new WeightsFormatError(`${where}: scale_attn_by_inverse_layer_idx = true is not supported`);
  }
  if (o.scale_attn_weights === false) {
    throw new WeightsFormatError(
      `${where}: scale_attn_weights = false is not supported (attention is always scaled by 1/sqrt(head_dim))`,
    );
  }
  if (o.add_cross_attention === true) {
    throw new WeightsFormatError(`${where}: add_cross_attention = true (encoder-decoder GPT-2) is not supported`);
  }
  if (o.tie_word_embeddings === false) {
    throw new WeightsFormatError(
      `${where}: tie_word_embeddings = false is not supported; the LM head is always the token embedding wte`,
    );
  }
  return {
    vocab_size,
    n_positions,
    n_embd,
    n_layer,
    n_head,
    layer_norm_epsilon: eps,
    activation_function: act as GPT2Config['activation_function'],
    bos_token_id: tokenId('bos_token_id', vocab_size),
    eos_token_id: tokenId('eos_token_id', vocab_size),
    n_inner: inner === undefined ? null : (inner as number | null),
  };
}

/**
 * The tensors a checkpoint of `cfg` must hold: HF names without the `transformer.` prefix, in
 * file order (embeddings, layers, final norm), with their shapes. Linear weights are Conv1D [in, out].
 */
export function parameterShapes(cfg: GPT2Config): Map<string, number[]> {
  const { vocab_size: V, n_positions: P, n_embd: C, n_layer: L } = cfg;
  const m = new Map<string, number[]>();
  m.set('wte.weight', [V, C]);
  m.set('wpe.weight', [P, C]);
  for (let l = 0; l < L; l++) {
    const h = `h.${l}.`;
    m.set(h + 'ln_1.weight', [C]);
    m.set(h + 'ln_1.bias', [C]);
    m.set(h + 'attn.c_attn.weight', [C, 3 * C]);
    m.set(h + 'attn.c_attn.bias', [3 * C]);
    m.set(h + 'attn.c_proj.weight', [C, C]);
    m.set(h + 'attn.c_proj.bias', [C]);
    m.set(h + 'ln_2.weight', [C]);
    m.set(h + 'ln_2.bias', [C]);
    m.set(h + 'mlp.c_fc.weight', [C, 4 * C]);
    m.set(h + 'mlp.c_fc.bias', [4 * C]);
    m.set(h + 'mlp.c_proj.weight', [4 * C, C]);
    m.set(h + 'mlp.c_proj.bias', [C]);
  }
  m.set('ln_f.weight', [C]);
  m.set('ln_f.bias', [C]);
  return m;
}

/** Number of parameters (the tied LM head counted once). */
export function parameterCount(cfg: GPT2Config): number {
  const { vocab_size: V, n_positions: P, n_embd: C, n_layer: L } = cfg;
  return V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C;
}

/** Head dimension n_embd / n_head. */
export function headDim(cfg: GPT2Config): number {
  return cfg.n_embd / cfg.n_head;
}
