// A build step's cache key (issue 10): sha256 over canonical JSON (sorted keys) of what the step's layer
// depends on — its parent (the previous step's key, or the base's diff_ids), the instruction as written
// after expansion, the digests of its inputs, and for steps run in the VM the environment, the mounts'
// specs, the network, the platform and the version of dockvm's guest. Changing any of these changes this
// step's key and, through `parent`, every later step's, and nothing before it.
// The material is hashed, never stored: what a cache entry shows (src/cache/local-store.ts) is its key and
// the step's createdBy. Secrets must not be part of it all the same (a secret mount is named by its id and
// target, never by its value): a key is a hash, and a hash of a short secret can be guessed.
import { sha256, type Digest } from '../image/digest.js';
import { LAYER_FORMAT_VERSION } from '../layer/format-version.js';
import { canonicalJson } from './canonical-json.js';

/** Bumped when the material below changes meaning, so that no older entry can match a newer key. */
export const CACHE_KEY_VERSION = 1;

export type KeyValue = string | number | boolean | null;

export interface StepKeyMaterial {
  /** the previous step's key; for a stage's first step, the base image's diff_ids, bottom first ([] for scratch) */
  readonly parent: Digest | { readonly baseDiffIds: readonly Digest[] };
  /** the instruction as written, after ARG/ENV expansion ("RUN apt-get install -y curl", "COPY --chown=1:1 a /b") */
  readonly instruction: string;
  /** digests of the step's inputs by name: COPY/ADD's selected files (hashSelection), run-as-root's copyToRoot */
  readonly inputs?: Readonly<Record<string, Digest>>;
  /** RUN: the environment the command sees, NAME=VALUE, in order */
  readonly env?: readonly string[];
  /** RUN: each mount's spec (type, target, source, id, mode…); a secret's id and target only, never its content */
  readonly mounts?: readonly Readonly<Record<string, KeyValue>>[];
  /** RUN: the network the step has ("none", "user") */
  readonly network?: string;
  /** anything else that changes the layer's bytes: the mtime clamp, owners, WORKDIR, USER, SHELL… */
  readonly options?: Readonly<Record<string, KeyValue>>;
  /** "linux/amd64", "linux/arm64/v8" */
  readonly platform: string;
  /** guestVersion() for a step run in the VM; null for one made on the host */
  readonly guest: string | null;
}

/** The step's key: "sha256:…". The same material always gives the same key, whatever order its fields were built in. */
export function stepKey(material: StepKeyMaterial): Digest {
  const parent = typeof material.parent === 'string' ? { key: material.parent } : { baseDiffIds: [...material.parent.baseDiffIds] };
  return sha256(
    canonicalJson({
      cacheKeyVersion: CACHE_KEY_VERSION,
      // dockvm's own normalisation decides the layer's bytes as much as the step does
      layerFormat: LAYER_FORMAT_VERSION,
      parent,
      instruction: material.instruction,
      inputs: material.inputs ?? {},
      env: material.env ?? [],
      mounts: material.mounts ?? [],
      network: material.network ?? 'none',
      options: material.options ?? {},
      platform: material.platform,
      guest: material.guest,
    }),
  );
}
