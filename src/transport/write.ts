// Writing an image where a destination says: "*.tar" a docker-archive, "*.tar.gz" / "*.tgz" a gzip
// docker-archive, "-" a docker-archive on stdout, "oci:DIR[:REF]" an OCI layout.
import { ImageReferenceError } from '../errors.js';
import type { Image } from '../image/image.js';
import { splitNameTag } from '../image/reference.js';
import { writeDockerArchive } from './docker-archive-writer.js';
import { writeOciLayout } from './oci-layout-writer.js';

export type Destination =
  | { kind: 'docker-archive'; path: string; gzip: boolean }
  | { kind: 'oci'; dir: string; ref?: string };

export function parseDestination(destination: string): Destination {
  if (destination.startsWith('oci:')) {
    const rest = destination.slice('oci:'.length);
    const colon = rest.indexOf(':');
    const dir = colon < 0 ? rest : rest.slice(0, colon);
    if (dir === '') throw new ImageReferenceError(`invalid destination "${destination}": oci: needs a directory`, { source: destination });
    return colon < 0 ? { kind: 'oci', dir } : { kind: 'oci', dir, ref: rest.slice(colon + 1) };
  }
  const path = destination.startsWith('docker-archive:') ? destination.slice('docker-archive:'.length) : destination;
  if (path === '-') return { kind: 'docker-archive', path, gzip: false };
  if (/\.(tar\.gz|tgz)$/.test(path)) return { kind: 'docker-archive', path, gzip: true };
  if (path.endsWith('.tar')) return { kind: 'docker-archive', path, gzip: false };
  throw new ImageReferenceError(
    `cannot tell what to write to "${destination}": name it *.tar (docker-archive), *.tar.gz (gzip docker-archive) or oci:DIR[:REF] (OCI layout)`,
    { source: destination },
  );
}

/**
 * Write `image` to `destination` (see parseDestination), known by `tags` ("name:tag"). An OCI layout
 * without a REF names the image by the first tag's tag part, as `skopeo copy … oci:DIR:TAG` would.
 */
export async function writeImage(image: Image, destination: string, options: { tags: readonly string[] }): Promise<void> {
  const target = parseDestination(destination);
  if (target.kind === 'docker-archive') {
    await writeDockerArchive([{ image, tags: options.tags }], target.path, { gzip: target.gzip });
    return;
  }
  const first = options.tags[0];
  const ref = target.ref ?? (first === undefined ? undefined : splitNameTag(first, first).tag);
  await writeOciLayout(image, target.dir, ref === undefined ? {} : { ref });
}
