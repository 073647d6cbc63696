/**
 * JSON schemas of the request bodies, checked by fastify's ajv before a route runs (types and
 * ranges; type coercion is off, so "0.5" is not a number). Fields a schema does not name are
 * ignored, except the ones request.ts refuses by name because ignoring them would change the
 * result (best_of > 1, suffix, ...). Ranges follow OpenAI's API reference; the extensions
 * (top_k, min_p, repetition_penalty, ignore_eos) follow vLLM and llama.cpp.
 */

const nullable = (type: string, extra: Record<string, unknown> = {}) => ({ type: [type, 'null'], ...extra });
const ids = { type: 'array', items: { type: 'integer', minimum: 0 } };

/** Sampling and length fields common to both endpoints. */
const common = {
  model: { type: 'string' },
  max_tokens: nullable('integer', { minimum: 0 }),
  temperature: nullable('number', { minimum: 0, maximum: 2 }),
  top_p: nullable('number', { minimum: 0, maximum: 1 }),
  n: nullable('integer', { minimum: 1, maximum: 128 }),
  stream: nullable('boolean'),
  stream_options: {
    type: ['object', 'null'],
    properties: { include_usage: { type: 'boolean' } },
  },
  stop: {
    anyOf: [
      { type: 'null' },
      { type: 'string', minLength: 1 },
      { type: 'array', maxItems: 16, items: { type: 'string', minLength: 1 } },
    ],
  },
  seed: nullable('integer', { minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
  presence_penalty: nullable('number', { minimum: -2, maximum: 2 }),
  frequency_penalty: nullable('number', { minimum: -2, maximum: 2 }),
  logit_bias: {
    type: ['object', 'null'],
    propertyNames: { pattern: '^[0-9]+$' },
    additionalProperties: { type: 'number', minimum: -100, maximum: 100 },
  },
  user: { type: 'string' },
  // Extensions (vLLM, llama.cpp): top_k -1 or 0 = off.
  top_k: nullable('integer', { minimum: -1 }),
  min_p: nullable('number', { minimum: 0, maximum: 1 }),
  repetition_penalty: nullable('number', { exclusiveMinimum: 0 }),
  ignore_eos: nullable('boolean'),
};

export const completionBody = {
  type: 'object',
  properties: {
    ...common,
    prompt: {
      anyOf: [
        { type: 'string' },
        { type: 'array', minItems: 1, items: { type: 'string' } },
        { ...ids, minItems: 1 },
        { type: 'array', minItems: 1, items: ids },
      ],
    },
    echo: nullable('boolean'),
    logprobs: nullable('integer', { minimum: 0, maximum: 5 }),
    best_of: nullable('integer', { minimum: 1 }),
    suffix: nullable('string'),
  },
} as const;

const content = {
  anyOf: [
    { type: 'string' },
    {
      type: 'array',
      items: {
        type: 'object',
        required: ['type', 'text'],
        properties: { type: { const: 'text' }, text: { type: 'string' } },
      },
    },
  ],
};

export const chatBody = {
  type: 'object',
  required: ['messages'],
  properties: {
    ...common,
    max_completion_tokens: nullable('integer', { minimum: 0 }),
    messages: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['role', 'content'],
        properties: {
          role: { enum: ['system', 'developer', 'user', 'assistant'] },
          content,
          name: { type: 'string' },
        },
      },
    },
    logprobs: nullable('boolean'),
    top_logprobs: nullable('integer', { minimum: 0, maximum: 20 }), // OpenAI's chat limit (completions: 5)
  },
} as const;
