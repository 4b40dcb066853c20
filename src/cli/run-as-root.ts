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
        'With runAsRoot the base must be linux/amd64. Writes a docker-archive (.tar, .tar.gz) or an OCI ' +
        'layout (oci:DIR).',
    )
    .argument('<spec>', 'spec.json (fields as nixpkgs buildImage; paths relative to the spec file)')
    .option('-o, --output <out>', 'where the image goes (overrides the spec\'s output): .tar, .tar.gz or oci:DIR')
    .addOption(new Option('--timeout <seconds>', 'give up when the build VM runs longer than this').argParser(positiveSeconds))
    .option('--json', 'print imageName, imageTag, output, config digest and layers as one JSON document')
    .action(async (specPath: string, options: { output?: string; timeout?: number; json?: boolean }) => {
      installSignalHandlers();
      // loaded on use: --help and other commands start faster
      const { loadSpec } = await import('../spec/load.js');
      const { runAsRoot } = await import('../build/run-as-root.js');
      const spec = await loadSpec(specPath);
      for (const warning of spec.warnings) say(`dockvm: warning: ${warning}`);
      const result = await runAsRoot(spec, {
        onWarning: (message) => say(`dockvm: warning: ${message}`),
        ...(options.output !== undefined ? { output: options.output } : {}),
        ...(options.timeout !== undefined ? { timeoutMs: options.timeout * 1000 } : {}),
      });
      if (options.json) {
        const { bootedVm: _booted, ...json } = result;
        printJson(json);
      } else {
        say(`dockvm: wrote ${result.imageName}:${result.imageTag} to ${result.output}`);
      }
    });
}

function positiveSeconds(value: string): number {
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds <= 0) throw new UsageError(`--timeout: "${value}" is not a positive number of seconds`);
  return seconds;
}
