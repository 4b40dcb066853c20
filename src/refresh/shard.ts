// --shard I/N: split many specs across N machines without coordination. Every machine sorts the same
// list the same way (by path relative to the working directory) and takes the specs whose index mod N
// is I-1, so the N shards are disjoint and together cover every spec.
import { relative, resolve } from 'node:path';
import { UsageError } from '../errors.js';

export interface Shard {
  /** 1-based: 1…count */
  index: number;
  count: number;
}

export function parseShard(text: string): Shard {
  const match = /^(\d+)\/(\d+)$/.exec(text);
  const index = Number(match?.[1]);
  const count = Number(match?.[2]);
  if (!match || count < 1 || index < 1 || index > count) {
    throw new UsageError(`--shard ${text}: expected I/N with 1 <= I <= N, e.g. --shard 2/4 for the second of four machines`);
  }
  return { index, count };
}

/** The specs, without duplicates, sorted by path; only this shard's when one is given. */
export function selectSpecs(paths: readonly string[], shard?: Shard, cwd: string = process.cwd()): string[] {
  const byKey = new Map<string, string>();
  for (const path of paths) {
    const key = relative(cwd, resolve(cwd, path));
    if (!byKey.has(key)) byKey.set(key, path);
  }
  const sorted = [...byKey.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).map((key) => byKey.get(key)!);
  if (!shard) return sorted;
  return sorted.filter((_path, i) => i % shard.count === shard.index - 1);
}
