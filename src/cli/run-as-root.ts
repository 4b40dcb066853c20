// dockvm run-as-root SPEC.json [-o OUT]: nixpkgs buildImage with runAsRoot.
import { Command, Option } from 'commander';
import { installSignalHandlers } from '../cleanup.js';
import { UsageError } from '../errors.js';
import { printJson, say } from './io.js';

export function registerRunAsRoot(program: Command): void {
  program
    .command('run-as-root')
    .description(
      'Build an image as nixpkgs buildImage does: the base image\'s layers (fromImage) mounted in a throwaway ' +
        'VM, copyToRoot copied in, the runAsRoot script run as root, extraCommands run in the new layer, and ' +
        'what changed (whiteouts included) packed as one reproducible layer on top of the base. Without ' +
        'runAsRoot no VM is booted. runAsRoot and extraCommands are bash scripts (bash -e): the image\'s ' +
        '/bin/bash, else a bundled static bash that leaves no trace; a #! line picks another interpreter. ' +
        'runAsRoot runs in a VM of the base\'s platform (linux/amd64 or linux/arm64: an arm64 base in an emulated ' +
        'arm64 machine on an amd64 host, and the other way round). The new layer is kept in the build cache (by a key of ' +
        'the base, the scripts, copyToRoot\'s contents, the environment and the guest): an unchanged spec ' +
        'boots no VM. Writes a docker-archive (.tar, .tar.gz) or an OCI layout (oci:DIR). A spec that lists ' +
        'platforms (["linux/amd64", "linux/arm64"]) gets one image per platform, each script run in its own ' +
        'platform\'s VM over that platform\'s base (a base that is an index gives each its image), written as an ' +
        'OCI image index into an OCI layout.',
    )
    .argument('<spec>', 'spec.json (fields as nixpkgs buildImage; paths relative to the spec file)')
    .option('-o, --output <out>', 'where the image goes (overrides the spec\'s output): .tar, .tar.gz or oci:DIR')
    .addOption(new Option('--timeout <seconds>', 'give up when the build VM runs longer than this').argParser(positiveSeconds))
    .option('--no-cache', 'build the layer in the VM even when the build cache has it (the result is still stored)')
    .addOption(new Option('--cache-from <ref>', 'look for the layer in this registry too, after the local cache: docker://HOST/REPO (repeatable)').argParser(collect))
    .addOption(new Option('--cache-to <ref>', 'push the layer\'s cache entry to this registry: docker://HOST/REPO (repeatable)').argParser(collect))
    .option('--json', 'print imageName, imageTag, output, config digest, layers, bootedVm and the build cache\'s verdict as one JSON document (with platforms: the index digest and each platform\'s)')
    .action(async (specPath: string, options: { output?: string; timeout?: number; cache: boolean; cacheFrom?: string[]; cacheTo?: string[]; json?: boolean }) => {
      installSignalHandlers();
      // loaded on use: --help and other commands start faster
      const { loadSpec } = await import('../spec/load.js');
      const { runAsRootPlatforms } = await import('../executor/run-as-root-platforms.js');
      const { parseCacheRepository } = await import('../cache/registry-store.js');
      for (const ref of [...(options.cacheFrom ?? []), ...(options.cacheTo ?? [])]) usage(() => parseCacheRepository(ref));
      const spec = await loadSpec(specPath);
      for (const warning of spec.warnings) say(`dockvm: warning: ${warning}`);
      const result = await runAsRootPlatforms(spec, {
        onWarning: (warning) => say(`dockvm: warning: ${warning}`),
        ...(options.output !== undefined ? { output: options.output } : {}),
        ...(options.timeout !== undefined ? { timeoutMs: options.timeout * 1000 } : {}),
        cache: { noCache: !options.cache, cacheFrom: options.cacheFrom ?? [], cacheTo: options.cacheTo ?? [] },
      });
      if (options.json) {
        printJson(result);
      } else if ('platforms' in result) {
        say(`dockvm: wrote ${result.imageName}:${result.imageTag} to ${result.output} (an index of ${result.platforms.map((p) => p.platform).join(', ')}: ${result.index.digest})`);
      } else {
        const cached = result.cache?.hit ? ` (layer from the build cache${result.cache.hit === 'local' ? '' : ` in ${result.cache.hit}`}: no VM booted)` : '';
        say(`dockvm: wrote ${result.imageName}:${result.imageTag} to ${result.output}${cached}`);
      }
    });
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** A malformed --cache-from/--cache-to is a usage error, before anything runs. */
function usage(check: () => unknown): void {
  try {
    check();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function positiveSeconds(value: string): number {
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds <= 0) throw new UsageError(`--timeout: "${value}" is not a positive number of seconds`);
  return seconds;
}
