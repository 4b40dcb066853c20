// Reading and writing images: docker-archives, OCI layouts (directories and tars); registries later.
export { parseImageReference, isRepoTag, normalizeRepoTag, type ImageReference, type Transport } from '../image/reference.js';
export { openImage, openImages, openIndex, type OpenImageOptions } from './open.js';
export type { OpenedImage } from './opened-image.js';
export { writeDockerArchive, beginDockerArchive, GZIP_LEVEL, type DockerArchiveWriter, type ArchiveImage, type WriteDockerArchiveOptions } from './docker-archive-writer.js';
export { writeOciLayout, writeOciIndex, type WriteOciLayoutOptions, type WrittenIndex } from './oci-layout-writer.js';
export { writeImage, parseDestination, type Destination } from './write.js';
export { hostArchitecture } from '../image/platform.js';
