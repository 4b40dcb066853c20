// dockvm refresh SPEC…: the nightly base-image refresh (src/refresh/). One line per spec on stderr as it
// finishes; --json prints every result as one array on stdout. Exit 0 when no spec failed, 1 otherwise.
import { relative } from 'node:path';
import { Command, Option } from 'commander';
import { installSignalHandlers } from '../cleanup.js';
import { DockvmError, UsageError } from '../errors.js';
import type { RefreshOptions, RefreshResult } from '../refresh/refresh.js';
import { parseShard } from '../refresh/shard.js';
import { printJson, say } from './io.js';
import { parseBool } from './pull.js';

export function registerRefresh(program: Command): void {
  program
    .command('refresh')
    .description(
      'Rebuild images whose base moved: for each spec, resolve fromImage to a digest and hash every other input ' +
        '(the spec, copyToRoot contents, scripts); when both match SPEC.lock.json beside the spec and the output ' +
        'exists, it is up-to-date (no pull, no VM). Otherwise it is rebuilt on exactly that digest, pushed with ' +
        '--push, and the lock is rewritten. A failing spec does not stop the others; exit 1 if any failed. ' +
        'See docs/refresh.md for cron, systemd, CI and Kubernetes.',
    )
    .argument('<spec...>', 'spec.json files (each keeps its lock in SPEC.lock.json beside it)')
    .addOption(new Option('--jobs <n>', 'refresh this many specs at once (each rebuild may boot a VM)').default(1).argParser(positiveInteger('--jobs')))
    .option('--push <ref>', 'push rebuilt images to [docker://]HOST/REPO[:TAG]; {name} and {tag} are the image\'s (needed with several specs), e.g. registry.example/{name}:{tag}')
    .addOption(new Option('--shard <i/n>', 'refresh only the specs whose index (sorted by path) mod N is I-1: run shard 1/N … N/N on N machines').argParser(parseShard))
    .option('--tls-verify [bool]', 'false: allow plain HTTP to registries (loopback registries may use it anyway)', parseBool, true)
    .option('--creds <user:pass>', 'credentials for the --push registry (and base registries without --push or on the same host); else the auth files')
    .addOption(new Option('--timeout <seconds>', 'give up on a build VM that runs longer than this').argParser(positiveInteger('--timeout')))
    .option('--json', 'print one JSON array: per spec its status, base digests, output and reason')
    .action(async (specs: string[], flags: { jobs: number; push?: string; shard?: RefreshOptions['shard']; tlsVerify: boolean; creds?: string; timeout?: number; json?: boolean }) => {
      installSignalHandlers();
      const { refresh } = await import('../refresh/refresh.js'); // loaded on use: faster start-up
      const results = await refresh(specs, {
        jobs: flags.jobs,
        tlsVerify: flags.tlsVerify,
        ...(flags.push !== undefined ? { push: flags.push } : {}),
        ...(flags.shard !== undefined ? { shard: flags.shard } : {}),
        ...(flags.creds !== undefined ? { creds: flags.creds } : {}),
        ...(flags.timeout !== undefined ? { timeoutMs: flags.timeout * 1000 } : {}),
        onResult: (result) => say(describe(result)),
      });
      if (flags.json) printJson(results);
      if (results.length === 0) say(`dockvm: no spec in shard ${flags.shard?.index}/${flags.shard?.count} (${specs.length} spec(s) given)`);
      const failed = results.filter((result) => result.status === 'failed').length;
      if (failed > 0) throw new DockvmError(`${failed} of ${results.length} spec(s) failed to refresh; their locks are unchanged`);
    });
}

/** The line a spec's result gets. */
export function describe(result: RefreshResult): string {
  const short = (digest: string | null) => (digest === null ? 'scratch' : digest.slice(0, 'sha256:'.length + 12));
  switch (result.status) {
    case 'up-to-date':
      return `up-to-date ${result.spec} (base ${short(result.baseDigest)})`;
    case 'rebuilt': {
      const base = result.previousBaseDigest !== null && result.previousBaseDigest !== result.baseDigest ? `${short(result.previousBaseDigest)} → ${short(result.baseDigest)}` : short(result.baseDigest);
      const pushed = result.pushedTo !== null ? `, pushed ${result.pushedTo} (${result.pushedDigest})` : '';
      return `rebuilt    ${result.spec} (base ${base}; ${result.reason}): wrote ${shortPath(result.output)}${pushed}`;
    }
    case 'failed':
      return `failed     ${result.spec}: ${result.reason}`;
  }
}

/** An output as the user would type it from here (oci:DIR keeps its prefix). */
function shortPath(output: string | null): string {
  if (output === null) return '';
  const oci = output.startsWith('oci:');
  const path = relative(process.cwd(), oci ? output.slice('oci:'.length) : output) || '.';
  return oci ? `oci:${path}` : path;
}

function positiveInteger(flag: string): (value: string) => number {
  return (value) => {
    const number = Number(value);
    if (!Number.isSafeInteger(number) || number < 1) throw new UsageError(`${flag}: "${value}" is not a positive whole number`);
    return number;
  };
}
