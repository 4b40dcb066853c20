// dockvm cache prune [--max-size SIZE] [--all] [--json]: bound dockvm's cache (src/cache/prune.ts).
import { Command, Option } from 'commander';
import { UsageError } from '../errors.js';
import { parseSize } from '../cache/size.js';
import { printJson, say } from './io.js';

export function registerCache(program: Command): void {
  const cache = program
    .command('cache')
    .description('Manage dockvm\'s cache (DOCKVM_CACHE): the build cache, squashfs images of layers, layer tars from registries, snapshots of the booted VM, RUN --mount=type=cache content.');
  cache
    .command('prune')
    .description(
      'Drop what dockvm makes again when needed — build cache entries and their layers, squashfs images of ' +
        'layers, layer tars downloaded from registries, snapshots of the booted VM, RUN --mount=type=cache content — least recently used first, until the rest fits ' +
        '--max-size (default DOCKVM_CACHE_MAX_SIZE, else 10G). Anything used in the last 10 minutes is kept ' +
        '(a build may be running). Never the guest kernel, initramfs or agent. Prints what it freed.',
    )
    .addOption(new Option('--max-size <size>', 'keep at most this much: 10G, 500M, 1.5GiB or bytes').argParser(sizeArgument('--max-size')))
    .option('--all', 'drop everything prunable, however recently used')
    .option('--json', 'print one JSON document: the bound, bytes freed and kept, per cache')
    .action(async (flags: { maxSize?: number; all?: boolean; json?: boolean }) => {
      if (flags.all && flags.maxSize !== undefined) throw new UsageError('--all drops everything: give --all or --max-size, not both');
      const { pruneCaches, describePrune } = await import('../cache/prune.js'); // loaded on use: faster start-up
      const result = await pruneCaches({ ...(flags.maxSize !== undefined ? { maxSize: flags.maxSize } : {}), ...(flags.all ? { all: true } : {}) });
      if (flags.json) printJson(result);
      else say(`dockvm: ${describePrune(result)}`);
    });
}

export function sizeArgument(flag: string): (value: string) => number {
  return (value) => {
    const size = parseSize(value);
    if (size === undefined) throw new UsageError(`${flag}: "${value}" is not a size: write e.g. 10G, 500M or a number of bytes`);
    return size;
  };
}
