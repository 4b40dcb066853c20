// Instruction flags (--name=value), checked against the set each instruction allows, as BuildKit's
// BFlags does: an unknown flag, a repeated one, a missing value or a bad boolean is an error naming
// the flag. A flag BuildKit knows but dockvm does not implement is an error too, never ignored.
import type { Word } from './words.js';

export type FlagKind = 'string' | 'strings' | 'bool';

/** What an instruction accepts: each flag's kind, or the reason it is refused. */
export type FlagSpec = Readonly<Record<string, FlagKind | { unsupported: string }>>;

export interface FlagValue {
  value: string;
  /** where the flag starts in the instruction's text */
  offset: number;
}

export interface ParsedFlags {
  strings: Map<string, FlagValue>;
  lists: Map<string, FlagValue[]>;
  bools: Map<string, boolean>;
}

export class FlagError extends Error {
  constructor(
    message: string,
    readonly flag: string,
    readonly offset: number,
  ) {
    super(message);
  }
}

export function parseFlags(words: readonly Word[], spec: FlagSpec): ParsedFlags {
  const parsed: ParsedFlags = { strings: new Map(), lists: new Map(), bools: new Map() };
  const seen = new Set<string>();
  for (const word of words) {
    if (!word.text.startsWith('--')) throw new FlagError(`arg should start with -- : ${word.text}`, word.text, word.offset);
    const eq = word.text.indexOf('=');
    const flag = eq < 0 ? word.text : word.text.slice(0, eq);
    const hasValue = eq >= 0;
    const value = hasValue ? word.text.slice(eq + 1) : '';
    const name = flag.slice(2);
    const kind = Object.hasOwn(spec, name) ? spec[name] : undefined;
    if (kind === undefined) {
      const known = Object.keys(spec).map((n) => `--${n}`);
      const hint = known.length ? ` (this instruction takes ${known.join(', ')})` : ' (this instruction takes no flags)';
      throw new FlagError(`unknown flag: ${flag}${hint}`, flag, word.offset);
    }
    if (typeof kind === 'object') throw new FlagError(`${flag} is not supported by dockvm: ${kind.unsupported}`, flag, word.offset);
    if (seen.has(name) && kind !== 'strings') throw new FlagError(`duplicate flag specified: ${flag}`, flag, word.offset);
    seen.add(name);
    switch (kind) {
      case 'bool': {
        if (hasValue && value === '') throw new FlagError(`missing a value on flag: ${flag}`, flag, word.offset);
        const lower = value.toLowerCase();
        if (lower !== '' && lower !== 'true' && lower !== 'false') {
          throw new FlagError(`expecting boolean value for flag ${flag}, not: ${value}`, flag, word.offset);
        }
        parsed.bools.set(name, lower !== 'false');
        break;
      }
      case 'string':
        if (!hasValue) throw new FlagError(`missing a value on flag: ${flag}`, flag, word.offset);
        parsed.strings.set(name, { value, offset: word.offset });
        break;
      case 'strings':
        if (!hasValue) throw new FlagError(`missing a value on flag: ${flag}`, flag, word.offset);
        parsed.lists.set(name, [...(parsed.lists.get(name) ?? []), { value, offset: word.offset }]);
        break;
    }
  }
  return parsed;
}
