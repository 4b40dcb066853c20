// dockvm pull REF -o OUT: nixpkgs pullImage. An image from a registry, by tag or by digest, its
// platform chosen from an index, written as a docker-archive (reproducibly, so that --sha256 can pin the
// archive) or an OCI layout, and tagged finalName:finalTag. A pull by tag says what to pin.
import type cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { DigestMismatchError, UsageError } from '../errors.js';
import type { Platform } from '../image/config.js';
import { isRepoTag, parseImageReference, type ImageReference } from '../image/reference.js';
import type { RegistryImage, RegistryOptions } from '../transport/registry/index.js';
import { registryOptions } from '../transport/registry/registry-options.js';
import { printJson, say } from './io.js';

export interface PullOptions extends RegistryOptions {
  os?: string;
  arch?: string;
  variant?: string;
  /** the name the image gets in the archive (default: the repository as written) */
  finalName?: string;
  /** the tag it gets (default: the reference's tag, or "latest" for a pull by digest) */
  finalTag?: string;
  /** the sha256 the written archive must have (hex, or sha256:hex) */
  sha256?: string;
  /** report download progress on stderr (when it is a terminal) */
  progress?: boolean;
}

export interface PullResult {
  reference: string;
  /** what the reference resolved to (an index's digest for a multi-platform tag): pin this */
  digest: string;
  /** the platform's own manifest, when the digest is an index's */
  manifestDigest?: string;
  os: string;
  architecture: string;
  variant?: string;
  output: string;
  finalName: string;
  finalTag: string;
  /** sha256 (hex) of the written archive; absent for an OCI layout or stdout */
  sha256?: string;
  configDigest: string;
  layers: { digest: string; diffId: string; size: number; mediaType: string }[];
}

export function registerPull(program: Command): void {
  program
    .command('pull')
    .description(
      'Pull an image from a registry (nixpkgs pullImage): REF is [docker://]HOST/REPO:TAG or …@sha256:DIGEST ' +
        '(docker.io names as Docker reads them). From a multi-platform index the --os/--arch/--variant image ' +
        'is taken (default linux and this host\'s architecture). OUT: *.tar (docker-archive), *.tar.gz, oci:DIR[:REF], ' +
        'or - for stdout. Archives are written reproducibly, so --sha256 pins them; a pull by tag prints the ' +
        'digest and sha256 to pin. Credentials: --creds, $REGISTRY_AUTH_FILE or ~/.docker/config.json (and the credential helpers it names).',
    )
    .argument('<ref>', 'the image: [docker://]HOST/REPO:TAG or [docker://]HOST/REPO@sha256:…')
    .requiredOption('-o, --output <out>', 'where to write it: *.tar, *.tar.gz, oci:DIR[:REF] or -')
    .option('--os <os>', 'the os to choose from an index (default linux)')
    .option('--arch <arch>', "the architecture to choose from an index (default: this host's)")
    .option('--variant <variant>', 'the architecture variant (v7, v8…)')
    .option('--final-name <name>', 'the image name in the archive (default: the repository as given)')
    .option('--final-tag <tag>', 'the tag in the archive (default: the tag, or latest for a pull by digest)')
    .option('--sha256 <hex>', 'fail, leaving no output, unless the written archive has this sha256')
    .option('--tls-verify [bool]', 'false: allow plain HTTP to the registry (loopback registries may use it anyway)', parseBool, true)
    .option('--creds <user:pass>', 'registry credentials (else from $REGISTRY_AUTH_FILE or ~/.docker/config.json)')
    .option('--json', 'print one JSON document describing the result')
    .action(async (text: string, flags: { output: string; os?: string; arch?: string; variant?: string; finalName?: string; finalTag?: string; sha256?: string; tlsVerify: boolean; creds?: string; json?: boolean }) => {
      if (flags.json && flags.output === '-') throw new UsageError('--json and -o - both want stdout; write the image to a file');
      const options: PullOptions = { tlsVerify: flags.tlsVerify, progress: process.stderr.isTTY === true };
      for (const key of ['os', 'arch', 'variant', 'finalName', 'finalTag', 'sha256', 'creds'] as const) if (flags[key] !== undefined) options[key] = flags[key];
      const result = await pull(text, flags.output, options);
      if (flags.json) printJson(result);
      else report(result, registryReference(text));
    });
}

/** A registry reference from what the user wrote: "docker://" is optional. */
export function registryReference(text: string): ImageReference {
  const full = text.startsWith('docker://') ? text : `docker://${text}`;
  if (!text.startsWith('docker://') && /^[a-z-]+:(?!\d)/.test(text) && !/^[^/]*:\d+\//.test(text)) {
    throw new UsageError(`${text}: pull reads from a registry: give [docker://]HOST/REPO:TAG (to copy archives, use merge)`);
  }
  return parseImageReference(full);
}

/** "docker://alpine:3" → "alpine": the repository as the user wrote it (nixpkgs' finalImageName default). */
function writtenName(ref: ImageReference): string {
  let name = ref.text.replace(/^docker:\/\//, '');
  const at = name.indexOf('@');
  if (at >= 0) name = name.slice(0, at);
  const colon = name.lastIndexOf(':');
  if (colon > name.lastIndexOf('/')) name = name.slice(0, colon);
  return name;
}

export async function pull(text: string, output: string, options: PullOptions = {}): Promise<PullResult> {
  // loaded on use, so that every other command starts faster
  const { parseDestination, writeImage } = await import('../transport/index.js');
  const { openRegistryImage, StreamingAbandoned } = await import('../transport/registry/index.js');
  const ref = registryReference(text);
  const destination = parseDestination(output);
  const expected = options.sha256 === undefined ? undefined : parseSha256(options.sha256);
  if (expected && (destination.kind !== 'docker-archive' || destination.path === '-')) {
    throw new UsageError('--sha256 checks an archive file: write a *.tar or *.tar.gz, not an OCI layout or stdout');
  }
  const finalName = options.finalName ?? writtenName(ref);
  const finalTag = options.finalTag ?? (ref.digest !== undefined && ref.tag === undefined ? 'latest' : (ref.tag ?? 'latest'));
  if (!isRepoTag(`${finalName}:${finalTag}`)) throw new UsageError(`"${finalName}:${finalTag}" is not a valid image name and tag for --final-name / --final-tag`);
  const platform: Partial<Platform> = {};
  if (options.os !== undefined) platform.os = options.os;
  if (options.arch !== undefined) platform.architecture = options.arch;
  if (options.variant !== undefined) platform.variant = options.variant;
  const tags = [`${finalName}:${finalTag}`];
  const open = (streamFirstTar: boolean) =>
    openRegistryImage(ref, { ...registryOptions(options), platform, spoolTars: destination.kind === 'docker-archive', keepBlobs: destination.kind !== 'docker-archive', streamFirstTar });
  if (destination.kind !== 'docker-archive' || destination.path === '-') {
    const image = await open(false);
    try {
      await withProgress(image, options, (progress) => image.fetchLayers(progress));
      await writeImage(image, output, { tags });
      return await describe(image, output, finalName, finalTag, undefined);
    } finally {
      await image.close();
    }
  }
  // An archive file: the first layer is written into it as it downloads (registry/live-tar.ts), the others
  // download meanwhile; when that cannot go on (its gzip trailer did not state its size), all over again spooled.
  const archive = async (stream: boolean): Promise<PullResult> => {
    const image = await open(stream);
    try {
      const sha256 = await withProgress(image, options, async (progress) => {
        // A download that fails fails the writer too, when it reaches that layer.
        const fetching = image.fetchLayers(progress).catch(() => undefined);
        try {
          return await writeArchiveChecked(image, destination.path, destination.gzip, tags, expected);
        } finally {
          await fetching;
        }
      });
      return await describe(image, output, finalName, finalTag, sha256);
    } finally {
      await image.close();
    }
  };
  try {
    return await archive(true);
  } catch (err) {
    if (!(err instanceof StreamingAbandoned)) throw err;
    return await archive(false);
  }
}

/** Run `work` with a download progress bar on stderr when asked for one. */
async function withProgress<T>(image: RegistryImage, options: PullOptions, work: (progress: { onBytes?: (count: number) => void }) => Promise<T>): Promise<T> {
  const bar = options.progress ? (await transferBars())('pulling', image.downloadSize) : undefined;
  try {
    return await work(bar ? { onBytes: (count) => bar.increment(count) } : {});
  } finally {
    bar?.stop();
  }
}

/** Write the archive, hashed as it is written; it takes its place only when the hash is the one expected. */
async function writeArchiveChecked(image: RegistryImage, path: string, gzip: boolean, tags: string[], expected: string | undefined): Promise<string> {
  const { writeDockerArchive } = await import('../transport/index.js');
  let written = '';
  await writeDockerArchive([{ image, tags }], path, {
    gzip,
    beforeCommit: (actual) => {
      written = actual;
      if (expected !== undefined && actual !== expected) {
        throw new DigestMismatchError(`${path}: the archive's sha256 is ${actual}, not the ${expected} that --sha256 expects (nothing was written)`, {
          source: path,
          digest: `sha256:${expected}`,
        });
      }
    },
  });
  return written;
}

async function describe(image: RegistryImage, output: string, finalName: string, finalTag: string, sha256: string | undefined): Promise<PullResult> {
  const { config } = image;
  const layers = [];
  for (const layer of image.layers) {
    const { digest, size, mediaType } = await layer.blob();
    layers.push({ digest, diffId: layer.diffId, size, mediaType });
  }
  return {
    reference: image.reference,
    digest: image.referenceDigest,
    ...(image.referenceDigest !== image.manifest.digest ? { manifestDigest: image.manifest.digest } : {}),
    os: config.os,
    architecture: config.architecture,
    ...(config.variant !== undefined ? { variant: config.variant } : {}),
    output,
    finalName,
    finalTag,
    ...(sha256 !== undefined ? { sha256 } : {}),
    configDigest: image.configDigest,
    layers,
  };
}

function report(result: PullResult, ref: ImageReference): void {
  const platform = [result.os, result.architecture, result.variant].filter(Boolean).join('/');
  say(`pulled ${result.reference} (${platform}) to ${result.output} as ${result.finalName}:${result.finalTag}`);
  say(`digest: ${result.digest}`);
  if (result.sha256 !== undefined) say(`sha256: ${result.sha256}`);
  // A pull by tag: what to write to pin it (nix-prefetch-docker's imageDigest and sha256).
  if (ref.digest === undefined) {
    const args = [`${writtenName(ref)}@${result.digest}`, '--final-name', result.finalName, '--final-tag', result.finalTag];
    if (result.os !== 'linux') args.push('--os', result.os);
    args.push('--arch', result.architecture);
    if (result.variant) args.push('--variant', result.variant);
    if (result.sha256 !== undefined) args.push('--sha256', result.sha256);
    say(`to pin it: dockvm pull ${args.join(' ')} -o ${result.output}`);
  }
}

function parseSha256(value: string): string {
  const hex = value.startsWith('sha256:') ? value.slice('sha256:'.length) : value;
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new UsageError(`--sha256 must be 64 lowercase hex digits (the sha256 of the archive), got "${value}"`);
  return hex;
}

export function parseBool(value: string | boolean | undefined): boolean {
  if (value === undefined || value === true || value === 'true') return true;
  if (value === false || value === 'false') return false;
  throw new UsageError(`expected true or false, got "${String(value)}"`);
}

export type TransferBar = (label: string, total: number) => cliProgress.SingleBar;

/** A maker of byte-count progress bars on stderr (only used when stderr is a terminal: loaded then). */
export async function transferBars(): Promise<TransferBar> {
  const { default: cliProgress } = await import('cli-progress');
  return (label, total) => transferBar(cliProgress, label, total);
}

function transferBar(cliProgress: typeof import('cli-progress'), label: string, total: number): cliProgress.SingleBar {
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% {done}/{size} MB`,
      hideCursor: true,
      clearOnComplete: true,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  const mb = (bytes: number) => (bytes / 1e6).toFixed(1);
  bar.start(total, 0, { size: mb(total), done: mb(0) });
  const update = bar.update.bind(bar);
  bar.increment = ((step?: number) => {
    const value = Math.min(total, Math.max(0, (bar as unknown as { value: number }).value + (step ?? 1)));
    update(value, { done: mb(value) });
  }) as typeof bar.increment;
  return bar;
}
