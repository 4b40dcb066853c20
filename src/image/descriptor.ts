// OCI content descriptors.
import type { Digest } from './digest.js';
import type { Platform } from './config.js';

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
}

export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface Index {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

/** The annotation an OCI layout's index uses to name an image ("latest", "repo:tag"). */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
