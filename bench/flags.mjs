// The bench scripts' command lines: node:util parseArgs (strict: an unknown flag, a missing value or
// a positional argument is an error) with its messages shortened to the flag at fault, plus checked
// integers. A bad command line is a UsageError; `parseOrExit` prints it with the usage and exits 2.
import { parseArgs } from 'node:util';

export class UsageError extends Error {}

/** A string flag with its default, and a boolean flag (false unless given): the options `flags` takes. */
export const str = (d) => ({ type: 'string', default: d });
export const bool = { type: 'boolean', default: false };

/** The values of `argv`'s flags per `options` (node:util parseArgs options: type, default, multiple). */
export function flags(argv, options) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    const flag = /'(--?[\w-]+)/.exec(e.message)?.[1] ?? '';
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new UsageError(`unknown flag ${flag}`);
    if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && /ambiguous/.test(e.message))
      throw new UsageError(`${flag}: a value that starts with '-' goes as ${flag}=VALUE`);
    if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') throw new UsageError(`${flag} needs a value`);
    throw new UsageError(e.message);
  }
}

/** An integer flag value in [lo, hi]. */
export function int(flag, v, lo, hi) {
  const n = Number(v);
  if (v === undefined || v.trim() === '' || !Number.isInteger(n) || n < lo || n > hi)
    throw new UsageError(`${flag} must be an integer in [${lo}, ${hi}], got ${v}`);
  return n;
}

/** A comma-separated list of integers in [lo, hi]. */
export function ints(flag, v, lo, hi) {
  return v.split(',').map((x) => int(flag, x, lo, hi));
}

/** parse(): a UsageError prints `<script>: <message>; <usage>` and exits 2; other errors propagate. */
export function parseOrExit(script, usage, parse) {
  try {
    return parse();
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`${script}: ${e.message}; ${usage}`);
    process.exit(2);
  }
}
