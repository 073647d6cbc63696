/**
 * Errors in OpenAI's shape: `{ error: { message, type, param, code } }` with an HTTP status.
 * toApiError maps whatever a route throws (fastify's body and validation errors, the engine's
 * errors, anything else) onto one of these; nothing but a 500 hides the original message.
 */
import {
  AbortError,
  CacheMisuseError,
  ContextOverflowError,
  DeviceLostError,
  GPT2WebGPUError,
  InvalidOptionError,
  OutOfMemoryError,
  PromptError,
} from '../errors.js';

export type ErrorType = 'invalid_request_error' | 'rate_limit_error' | 'server_error' | 'not_found_error';

export interface ErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

/** An error answered as is: status, OpenAI's type, the request field at fault, a code. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType = status === 429
      ? 'rate_limit_error'
      : status >= 500
        ? 'server_error'
        : 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (Retry-After of a 429). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }
  get body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** A 400 naming the field at fault. */
export function invalid(param: string | null, message: string, code: string | null = null): ApiError {
  return new ApiError(400, message, 'invalid_request_error', param, code);
}

/** What fastify attaches to its errors: a status, a code, and ajv's findings for schema failures. */
interface FastifyLikeError {
  statusCode?: number;
  code?: string;
  message: string;
  validation?: Array<{ instancePath?: string; keyword?: string; params?: Record<string, unknown>; message?: string }>;
  validationContext?: string;
}

/** The request field a schema failure is about: the first path segment, or the missing property. */
function validationParam(v: NonNullable<FastifyLikeError['validation']>[number]): string | null {
  const seg = (v.instancePath ?? '').split('/').filter(Boolean);
  if (seg.length) return seg.map((s, i) => (i === 0 ? s : /^\d+$/.test(s) ? `[${s}]` : `.${s}`)).join('');
  const missing = v.params?.missingProperty;
  return typeof missing === 'string' ? missing : null;
}

/** Hints for fields whose schema is a choice of shapes (ajv alone says "must match a schema in anyOf"). */
const SHAPES: Record<string, string> = {
  prompt: 'a string, an array of strings, an array of token ids, or an array of arrays of token ids',
  stop: 'a non-empty string or an array of at most 16 non-empty strings',
  content: 'a string or an array of { "type": "text", "text": string } parts',
};

/** ajv's message, in words for type failures ("must be number,null" -> "must be a number"). */
function describe(v: NonNullable<FastifyLikeError['validation']>[number]): string {
  const type = v.params?.type;
  if (v.keyword === 'type' && (typeof type === 'string' || Array.isArray(type))) {
    const types = (Array.isArray(type) ? (type as string[]) : type.split(',')).filter((t) => t !== 'null');
    const article = (t: string) => (/^[aeiou]/.test(t) ? `an ${t}` : `a ${t}`);
    return `must be ${types.map(article).join(' or ')}`;
  }
  return v.message ?? 'is invalid';
}

function fromValidation(e: FastifyLikeError): ApiError {
  // With a choice of shapes (anyOf), ajv lists each branch's failure, then the anyOf one.
  const v = e.validation!.find((x) => x.keyword === 'anyOf') ?? e.validation![0]!;
  const param = validationParam(v);
  const field = param?.split(/[.[]/)[0] ?? '';
  const shape = SHAPES[field] ?? (v.instancePath?.endsWith('/content') ? SHAPES.content : undefined);
  const what = param ?? e.validationContext ?? 'body';
  const msg =
    field === 'logit_bias' && v.keyword !== 'type'
      ? `'logit_bias' must map token ids ("50256") to numbers in [-100, 100]`
      : v.keyword === 'anyOf' && shape
        ? `'${what}' must be ${shape}`
        : v.keyword === 'required'
          ? `'${what}' is required`
          : `'${what}' ${describe(v)}`;
  return invalid(param, `Invalid request: ${msg}`);
}

/** Maps a thrown value to the error answered. */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  const f = e as FastifyLikeError;
  if (f && Array.isArray(f.validation) && f.validation.length) return fromValidation(f);
  if (e instanceof ContextOverflowError) return invalid('prompt', e.message, 'context_length_exceeded');
  if (e instanceof PromptError) return invalid('prompt', e.message);
  if (e instanceof InvalidOptionError) return invalid(null, e.message);
  if (e instanceof AbortError || (e as Error)?.name === 'AbortError')
    return new ApiError(499, (e as Error).message, 'invalid_request_error', null, 'client_closed');
  if (e instanceof OutOfMemoryError || e instanceof DeviceLostError)
    return new ApiError(503, `${e.name}: ${e.message}`, 'server_error');
  if (e instanceof CacheMisuseError || e instanceof GPT2WebGPUError)
    return new ApiError(500, `${e.name}: ${e.message}`, 'server_error');
  if (f && typeof f.statusCode === 'number' && f.statusCode >= 400 && f.statusCode < 500) {
    // fastify's own: 400 malformed JSON / empty body, 413 body too large, 415 content type.
    const msg = f.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? `Request body is too large: ${f.message}` : f.message;
    return new ApiError(f.statusCode, msg, 'invalid_request_error', null, f.code ?? null);
  }
  return new ApiError(500, `Internal server error: ${(e as Error)?.message ?? String(e)}`, 'server_error');
}
