// dockvm push IMAGE REF: upload an image (any IMAGE form) to a registry and print the manifest digest.
import type { Command } from 'commander';
import type { PushIndexResult, PushResult, RegistryOptions } from '../transport/registry/index.js';
import { printJson, say } from './io.js';
import { formatPlatform } from '../transport/registry/platform.js';
import { registryOptions } from '../transport/registry/registry-options.js';
import { parseBool, registryReference, transferBars } from './pull.js';

export function registerPush(program: Command): void {
  program
    .command('push')
    .description(
      'Push an image to a registry and print its manifest digest on stdout. Blobs the repository has are ' +
        'skipped, blobs of another repository of the same registry are mounted; uncompressed layers are ' +
        'gzipped (deterministically; with igzip when isal is installed, else zlib). Credentials: --creds, ' +
        '$REGISTRY_AUTH_FILE or ~/.docker/config.json (and the credential helpers it names). An OCI layout ' +
        '(or archive) whose REF names a multi-platform index, or a registry tag naming one, is pushed as an index: ' +
        'every platform\'s image and manifest, then the index, whose digest is printed.',
    )
    .argument('<image>', 'PATH, docker-archive:PATH[:NAME:TAG], oci:DIR[:REF], oci-archive:PATH[:REF] or docker://REF')
    .argument('<ref>', 'where to: [docker://]HOST/REPO[:TAG]')
    .option('--tls-verify [bool]', 'false: allow plain HTTP to the registry (loopback registries may use it anyway)', parseBool, true)
    .option('--creds <user:pass>', 'registry credentials (else from $REGISTRY_AUTH_FILE or ~/.docker/config.json)')
    .option('--json', 'print one JSON document describing the result')
    .action(async (source: string, target: string, flags: { tlsVerify: boolean; creds?: string; json?: boolean }) => {
      const options: RegistryOptions = registryOptions({ tlsVerify: flags.tlsVerify, ...(flags.creds !== undefined ? { creds: flags.creds } : {}) });
      const result = await push(source, target, { ...options, progress: process.stderr.isTTY === true });
      if (flags.json) {
        printJson(result);
        return;
      }
      say(`pushed ${source} to ${result.reference} (${describeBlobs(result)})`);
      process.stdout.write(`${result.digest}\n`);
    });
}

export async function push(source: string, target: string, options: RegistryOptions & { progress?: boolean } = {}): Promise<PushResult | PushIndexResult> {
  // loaded on use, so that every other command starts faster
  const { pushSource } = await import('../transport/push-source.js');
  const destination = registryReference(target);
  const { progress, ...registry } = options;
  const newBar = progress ? await transferBars() : undefined;
  let bar: ReturnType<NonNullable<typeof newBar>> | undefined;
  try {
    return await pushSource(source, destination, {
      ...registryOptions(registry),
      ...(newBar
        ? {
            onProgress: (event) => {
              if ('total' in event) bar = newBar('pushing', event.total);
              else bar?.increment(event.bytes);
            },
          }
        : {}),
    });
  } finally {
    bar?.stop();
  }
}

function describeBlobs(result: PushResult | PushIndexResult): string {
  const layers = 'manifests' in result ? result.manifests.flatMap((manifest) => manifest.layers) : result.layers;
  const count = (status: string) => layers.filter((layer) => layer.status === status).length;
  const parts = [`${count('uploaded')} layer(s) uploaded`];
  if (count('exists')) parts.push(`${count('exists')} already there`);
  if (count('mounted')) parts.push(`${count('mounted')} mounted`);
  if ('manifests' in result) parts.unshift(`an index of ${result.manifests.map((manifest) => formatPlatform(manifest.platform)).join(', ')}`);
  return parts.join(', ');
}
