/**
 * The command line's flag parsing: flag and command records, usage errors, and the parser that
 * looks every flag up (naming the closest known one when it is unknown) and takes negative
 * numbers as values.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { InvalidOptionError } from './errors.js';
import { readBoundedFileSync } from './node-sources.js';

export type Flag = {
  type: 'string' | 'boolean';
  default?: string | boolean;
  help: string;
  /** Given more than once: every value, in order (a string[]). */
  multiple?: boolean;
  /** An old name of the flag named here: accepted with a note on stderr, not listed in --help. */
  deprecatedFor?: string;
};
export type Values = Record<string, string | boolean | string[] | undefined>;
export interface Command {
  summary: string;
  usage: string;
  flags: Record<string, Flag>;
  run(v: Values): Promise<void>;
}

export class UsageError extends Error {}

/** A numeric flag value within its rule, else a usage error naming the flag and the rule. */
export function num(v: unknown, name: string, { int = false, min = -Infinity, max = Infinity } = {}): number {
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

/** A flag value that must be one of `values`, else a usage error listing them. */
export function oneOf<T extends string>(v: unknown, name: string, values: readonly T[]): T {
  const s = String(v);
  if (!(values as readonly string[]).includes(s))
    throw new UsageError(`--${name} must be one of ${values.join(', ')}, got "${s}"`);
  return s as T;
}

/** The largest file a flag reads (--logits: 16 M float32 values). */
const MAX_FLAG_FILE_BYTES = 64 << 20;

/** Reads the file a flag names; a missing or unreadable file is an InvalidOptionError naming both. */
export function readFlagFile(flag: string, path: string): Buffer {
  try {
    return readBoundedFileSync(path, MAX_FLAG_FILE_BYTES); // a regular file, read only up to the limit
  } catch (e) {
    throw new InvalidOptionError(
      `--${flag} ${path}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

/** Writes the file a flag names; failure is an InvalidOptionError naming both. */
export function writeFlagFile(flag: string, path: string, data: Uint8Array): void {
  try {
    writeFileSync(path, data);
  } catch (e) {
    throw new InvalidOptionError(
      `--${flag} ${path}: cannot write it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

/** Comma-separated token ids. */
export function parseIds(s: string, flag = 'ids'): number[] {
  const parts = s.split(',').map((p) => p.trim());
  if (parts.some((p) => !/^\d+$/.test(p)))
    throw new UsageError(`--${flag} must be comma-separated non-negative integers, got "${s}"`);
  return parts.map(Number);
}

/**
 * Edit distance: insertions, deletions, substitutions and swaps of two neighbouring characters
 * ("modle" -> "model") each count 1 (optimal string alignment).
 */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) {
      const row = d[i]!;
      row[j] = Math.min(d[i - 1]![j]! + 1, row[j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        row[j] = Math.min(row[j]!, d[i - 2]![j - 2]! + 1);
    }
  return d[a.length]![b.length]!;
}

/**
 * The known word a mistyped one most likely meant: the only known word it abbreviates ("temp"),
 * else the closest by edit distance when that is at most a third of its length (at least 1), else
 * none.
 */
export function closest(word: string, known: string[]): string | undefined {
  const starting = known.filter((k) => k.startsWith(word));
  if (word.length >= 2 && starting.length === 1) return starting[0];
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(word, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  return bestD <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}

/** A value that is a negative number (`--temperature -1`), not a flag. */
const NEGATIVE_NUMBER = /^-(\d|\.\d|Infinity$)/;

/** The API's option names in kebab case whose flag is spelt otherwise (offered in the unknown-option message). */
const API_SPELLINGS: Record<string, string> = {
  'stop-strings': 'stop',
  'bad-words-ids': 'bad-words',
  'include-stop-string': 'exclude-stop',
  'stop-at-eos': 'no-stop-at-eos',
  'num-return-sequences': 'num-sequences',
};

/**
 * Parses a command's flags. Before node's parseArgs sees them, every flag is looked up (an unknown
 * one is a usage error naming the closest known flag) and every string flag is joined to its value
 * (`--x v` -> `--x=v`), so a negative number is a value rather than an "ambiguous" flag and a
 * missing value is named. Then the deprecated names are mapped to the current ones and the
 * defaults filled in.
 */
export function parseFlags(name: string, cmd: Command, args: string[]): Values {
  const flags: Record<string, Flag> = { ...cmd.flags, help: { type: 'boolean', help: '' } };
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      joined.push(...args.slice(i)); // all positionals: parseArgs refuses them below
      break;
    }
    if (!a.startsWith('-') || a === '-' || NEGATIVE_NUMBER.test(a)) {
      joined.push(a); // a positional: parseArgs refuses it below
      continue;
    }
    if (a === '-h') {
      joined.push('--help');
      continue;
    }
    const [, key, value] = /^--?([^=]*)(?:=(.*))?$/s.exec(a)!;
    const f = a.startsWith('--') && Object.hasOwn(flags, key!) ? flags[key!] : undefined;
    if (!f) {
      const known = Object.keys(flags).filter((k) => !flags[k]!.deprecatedFor);
      const spelt = Object.hasOwn(API_SPELLINGS, key!) ? API_SPELLINGS[key!] : undefined;
      const guess = spelt && known.includes(spelt) ? spelt : closest(key!, known);
      throw new UsageError(
        `unknown option ${a.split('=')[0]} ${guess ? `(did you mean --${guess}?)` : `(gpt2-webgpu ${name} --help lists the options)`}`,
      );
    }
    if (f.type === 'boolean') {
      if (value !== undefined) throw new UsageError(`--${key} takes no value, got "${value}"`);
      joined.push(a);
    } else if (value !== undefined) {
      joined.push(a);
    } else {
      const next = args[i + 1];
      if (next === undefined || (next.startsWith('-') && !NEGATIVE_NUMBER.test(next)))
        throw new UsageError(`--${key} needs a value (one starting with "-" goes as --${key}=-...)`);
      joined.push(`--${key}=${next}`);
      i++;
    }
  }
  const options: ParseArgsConfig['options'] = {};
  for (const [k, f] of Object.entries(flags)) options[k] = { type: f.type, multiple: Boolean(f.multiple) };
  let values: Values;
  try {
    values = parseArgs({ args: joined, options, strict: true, allowPositionals: false }).values as Values;
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]!, { cause: e });
  }
  for (const [k, f] of Object.entries(cmd.flags)) {
    if (!f.deprecatedFor || values[k] === undefined) continue;
    if (values[f.deprecatedFor] !== undefined)
      throw new UsageError(`give --${f.deprecatedFor} alone (--${k} is its old name)`);
    values[f.deprecatedFor] = values[k];
    delete values[k];
    process.stderr.write(`note: --${k} is deprecated, use --${f.deprecatedFor}\n`);
  }
  for (const [k, f] of Object.entries(cmd.flags))
    if (values[k] === undefined && f.default !== undefined) values[k] = f.default;
  return values;
}
