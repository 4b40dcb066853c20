// dockvm inspect IMAGE [--json]: what an image is made of: names, platform, config digest, layers.
import type { Command } from 'commander';
import type { ContainerConfig } from '../image/config.js';
import type { OpenedImage } from '../transport/index.js';
import { printJson } from './io.js';

export interface InspectResult {
  reference: string;
  repoTags: string[];
  os: string;
  architecture: string;
  variant?: string;
  created?: string;
  configDigest: string;
  layers: { digest: string; diffId: string; size: number; mediaType: string }[];
  config: ContainerConfig;
}

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description(
      'Show what an image is: its tags, os/architecture, creation time, config digest, each layer\'s digest, diff_id and size, and its Env, Entrypoint and Cmd. Uncompressed layers are hashed (and so checked against their diff_id); from a multi-image archive, the first image unless IMAGE names one.',
    )
    .argument('<image>', 'PATH, docker-archive:PATH[:NAME:TAG], oci:DIR[:REF] or oci-archive:PATH[:REF]')
    .option('--json', 'print one JSON document instead of text')
    .action(async (reference: string, options: { json?: boolean }) => {
      const { openImage } = await import('../transport/index.js'); // loaded on use: faster start-up
      const image = await openImage(reference);
      try {
        const result = await describe(image);
        if (options.json) printJson(result);
        else process.stdout.write(formatText(result));
      } finally {
        await image.close();
      }
    });
}

export async function describe(image: OpenedImage): Promise<InspectResult> {
  const { config } = image;
  const layers = [];
  for (const layer of image.layers) {
    const blob = await layer.blob();
    layers.push({ digest: blob.digest, diffId: layer.diffId, size: blob.size, mediaType: blob.mediaType });
  }
  return {
    reference: image.reference,
    repoTags: [...image.repoTags],
    os: config.os,
    architecture: config.architecture,
    ...(config.variant !== undefined ? { variant: config.variant } : {}),
    ...(config.created !== undefined ? { created: config.created } : {}),
    configDigest: image.configDigest,
    layers,
    config: config.config ?? {},
  };
}

function formatText(result: InspectResult): string {
  const lines: string[] = [];
  const field = (label: string, value: string) => lines.push(`${`${label}:`.padEnd(12)} ${value}`);
  field('Image', result.reference);
  field('Tags', result.repoTags.length ? result.repoTags.join(', ') : '(none)');
  field('Platform', [result.os, result.architecture, result.variant].filter(Boolean).join('/'));
  field('Created', result.created ?? '(not set)');
  field('Config', result.configDigest);
  const { Entrypoint, Cmd, Env, WorkingDir, User } = result.config;
  field('Entrypoint', Entrypoint ? JSON.stringify(Entrypoint) : '(none)');
  field('Cmd', Cmd ? JSON.stringify(Cmd) : '(none)');
  if (WorkingDir) field('WorkingDir', WorkingDir);
  if (User) field('User', User);
  field('Env', Env?.length ? '' : '(none)');
  for (const variable of Env ?? []) lines.push(`  ${variable}`);
  lines.push(`Layers (${result.layers.length}, bottom first):`);
  result.layers.forEach((layer, i) => {
    lines.push(`  ${String(i + 1).padStart(2)}. digest  ${layer.digest}  ${formatSize(layer.size)}  ${layer.mediaType}`);
    lines.push(`      diff_id ${layer.diffId}`);
  });
  return `${lines.map((line) => line.trimEnd()).join('\n')}\n`;
}

function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]} (${bytes} bytes)`;
}
