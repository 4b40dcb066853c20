// dockvm export IMAGE -o OUT [--mtime EPOCH] [--engine native|vm] [--json]: nixpkgs exportImage: the
// image's merged filesystem as one uncompressed tar. The native engine computes it from the layer tars
// (src/flatten); the VM engine mounts the layers in the build VM and tars the merged view
// (src/build/export-vm.ts). Both give the same bytes.
import { createReadStream, createWriteStream, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Option, type Command } from 'commander';
import { installSignalHandlers, withTempDir } from '../cleanup.js';
import { UsageError } from '../errors.js';
import type { FlattenStats } from '../flatten/flatten.js';
import { writeAtomically } from '../output.js';
import { printJson, say } from './io.js';

export interface ExportResult {
  reference: string;
  /** the file written, or "-" for stdout */
  output: string;
  engine: 'native' | 'vm';
  /** entries in the tar */
  entries: number;
  /** bytes of the tar */
  size: number;
  layers: number;
  /** the mtime clamp applied, if any (seconds since the epoch) */
  mtime?: number;
}

interface ExportOptions {
  output?: string;
  mtime?: string;
  engine: 'native' | 'vm';
  json?: boolean;
}

export function registerExport(program: Command): void {
  program
    .command('export')
    .description(
      'Write the merged filesystem of IMAGE as one uncompressed tar (nixpkgs exportImage), by default with no VM and ' +
        'nothing extracted to disk: whiteouts applied, entries sorted by path with parents first, owners ' +
        'numeric, hard links kept. The same image gives the same bytes. "-o -" writes the tar to stdout ' +
        '(not to a terminal); a file is written atomically: on failure none is left.',
    )
    .argument('<image>', 'PATH, docker-archive:PATH[:NAME:TAG], oci:DIR[:REF] or oci-archive:PATH[:REF]')
    .option('-o, --output <out>', 'the tar to write, or - for stdout')
    .option('--mtime <epoch>', 'clamp every mtime to at most this many seconds since the epoch (default: $SOURCE_DATE_EPOCH if set, else keep them)')
    .addOption(new Option('--engine <engine>', 'native: from the layer tars; vm: mount the layers in the build VM and tar the merged view (the same bytes, slower)').choices(['native', 'vm']).default('native'))
    .option('--json', 'print one JSON document describing the result')
    .action(async (reference: string, options: ExportOptions) => {
      const output = checkOutput(options);
      const mtime = parseMtime(options.mtime);
      installSignalHandlers();
      const result = await exportImage(reference, output, mtime, options.engine);
      if (options.json) printJson(result);
      else say(`wrote ${output === '-' ? 'stdout' : output}: ${result.entries} entries, ${result.size} bytes, from ${result.layers} layer(s)`);
    });
}

/** Flatten the image at `reference` into `output` (a path, or "-" for stdout). */
export async function exportImage(reference: string, output: string, mtime?: number, engine: 'native' | 'vm' = 'native'): Promise<ExportResult> {
  if (engine === 'vm') return exportImageInVm(reference, output, mtime);
  // loaded on use, so that every other command starts faster
  const { openImage } = await import('../transport/index.js');
  const { writeFlattened } = await import('../flatten/flatten.js');
  const image = await openImage(reference);
  try {
    let stats: FlattenStats | undefined;
    const options = {
      source: reference,
      ...(mtime !== undefined ? { mtime } : {}),
      onIndexed: (indexed: FlattenStats) => {
        stats = indexed;
      },
    };
    let size: number;
    if (output === '-') {
      size = await writeFlattened(image, process.stdout, options);
    } else {
      size = await writeAtomically(output, async (temp) => {
        // writeAtomically removes the temp file on failure; this covers an exit on Ctrl-C too.
        const removeTemp = () => rmSync(temp, { force: true });
        process.once('exit', removeTemp);
        const file = createWriteStream(temp, { mode: 0o644 });
        // A write error (a full disk) reaches writeFlattened through its write callbacks, which reject;
        // the stream's own 'error' event needs a listener too, or it kills the process.
        let writeError: Error | undefined;
        file.on('error', (err) => (writeError ??= Object.assign(err, { path: output })));
        try {
          const written = await writeFlattened(image, file, options);
          if (writeError) throw writeError;
          return written;
        } catch (err) {
          throw writeError ?? err;
        } finally {
          await new Promise<void>((resolve) => file.end(resolve));
          process.off('exit', removeTemp);
        }
      });
    }
    return {
      reference,
      output,
      engine: 'native',
      entries: stats!.entries,
      size,
      layers: stats!.layers,
      ...(mtime !== undefined ? { mtime } : {}),
    };
  } finally {
    await image.close();
  }
}

/** The VM engine: the tar is made in a temp directory first, then renamed into place or copied to stdout. */
async function exportImageInVm(reference: string, output: string, mtime: number | undefined): Promise<ExportResult> {
  const { openImage } = await import('../transport/index.js');
  const { exportInVm } = await import('../build/export-vm.js');
  const image = await openImage(reference);
  try {
    const options = { source: reference, ...(mtime !== undefined ? { mtime } : {}) };
    const result =
      output !== '-'
        ? await writeAtomically(output, (temp) => whileRunning(temp, () => exportInVm(image, temp, options)))
        : await withTempDir('export', async (tmp) => {
            const tar = join(tmp, 'export.tar');
            const exported = await exportInVm(image, tar, options);
            await pipeline(createReadStream(tar), process.stdout, { end: false });
            return exported;
          });
    return { reference, output, engine: 'vm', entries: result.entries, size: result.size, layers: result.layers, ...(mtime !== undefined ? { mtime } : {}) };
  } finally {
    await image.close();
  }
}

/** Run `produce`, removing the file `temp` if the process exits meanwhile (Ctrl-C). */
async function whileRunning<T>(temp: string, produce: () => Promise<T>): Promise<T> {
  const removeTemp = () => rmSync(temp, { force: true });
  process.once('exit', removeTemp);
  try {
    return await produce();
  } finally {
    process.off('exit', removeTemp);
  }
}

function checkOutput(options: ExportOptions): string {
  const output = options.output;
  if (output === undefined) throw new UsageError('give -o FILE for the tar, or -o - to write it to stdout');
  if (output === '-' && options.json) throw new UsageError('--json and -o - both want stdout; write the tar to a file');
  if (output === '-' && process.stdout.isTTY) {
    throw new UsageError('refusing to write a tar to a terminal: redirect stdout (-o - > FILE) or give -o FILE');
  }
  return output;
}

/** --mtime, else $SOURCE_DATE_EPOCH, else none: whole seconds since the epoch. */
function parseMtime(flag: string | undefined): number | undefined {
  const [value, what] = flag !== undefined ? [flag, '--mtime'] : [process.env.SOURCE_DATE_EPOCH, 'SOURCE_DATE_EPOCH'];
  if (value === undefined || (flag === undefined && value === '')) return undefined;
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new UsageError(`${what} must be whole seconds since the epoch (like 1700000000), not ${JSON.stringify(value)}`);
  }
  return Number(value);
}
