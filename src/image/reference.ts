// Image references, named the way skopeo names them:
//   PATH                              a docker-archive (.tar or .tar.gz)
//   docker-archive:PATH[:NAME:TAG]    a docker-archive, optionally one image of several (or :@N, the Nth)
//   oci:DIR[:REF]                     an OCI image layout directory
//   oci-archive:PATH[:REF]            an OCI image layout in a tar
//   docker://HOST/REPO:TAG            a registry (HOST defaults to docker.io), or …@sha256:<hex>
// Parsing is pure: it touches no file and no network.
import { ImageReferenceError } from '../errors.js';
import { isDigest } from './digest.js';
import { PATH_COMPONENT, REGISTRY_HOST, isValidTag, looksLikeHost } from './names.js';

export type Transport = 'docker-archive' | 'oci' | 'oci-archive' | 'docker';

export interface ImageReference {
  transport: Transport;
  /** archive path or layout directory (not for docker://) */
  path?: string;
  /** docker-archive: the image name to pick; docker://: the familiar name ("docker.io/library/alpine") */
  name?: string;
  /** docker-archive: the tag to pick; docker://: the tag ("latest" when neither tag nor digest is given) */
  tag?: string;
  /** docker-archive: pick the image at this index of manifest.json (the "@N" form) */
  index?: number;
  /** oci / oci-archive: the org.opencontainers.image.ref.name to pick */
  ref?: string;
  /** docker://: the host to contact ("registry-1.docker.io" for docker.io) */
  registry?: string;
  /** docker://: the repository path on that host ("library/alpine") */
  repository?: string;
  /** docker://: the manifest digest, when the reference pins one */
  digest?: string;
  /** docker://: what to fetch, "HOST/REPO:TAG" or "HOST/REPO@sha256:…", with docker.io expanded */
  registryRef?: string;
  /** the reference as the user wrote it */
  text: string;
}

const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_REGISTRY = 'registry-1.docker.io';

export function parseImageReference(text: string): ImageReference {
  if (text === '') throw new ImageReferenceError('empty image reference: give a path, docker-archive:PATH, oci:DIR or docker://REF');
  const colon = text.indexOf(':');
  const prefix = colon > 0 ? text.slice(0, colon) : '';
  const rest = text.slice(colon + 1);
  switch (prefix) {
    case 'docker-archive':
      return parseDockerArchive(text, rest);
    case 'oci':
    case 'oci-archive':
      return parseOci(text, prefix, rest);
    case 'docker':
      if (!rest.startsWith('//')) throw bad(text, 'a registry reference is written docker://HOST/REPO:TAG');
      return parseDocker(text, rest.slice(2));
    case 'docker-daemon':
    case 'containers-storage':
    case 'dir':
      throw bad(text, `the ${prefix}: transport is not supported; use docker-archive:, oci:, oci-archive: or docker://`);
    default:
      return { transport: 'docker-archive', path: text, text };
  }
}

function parseDockerArchive(text: string, rest: string): ImageReference {
  const colon = rest.indexOf(':');
  const path = colon < 0 ? rest : rest.slice(0, colon);
  if (path === '') throw bad(text, 'docker-archive: needs a path');
  if (colon < 0) return { transport: 'docker-archive', path, text };
  const pick = rest.slice(colon + 1);
  if (pick.startsWith('@')) {
    const index = Number(pick.slice(1));
    if (!/^@[0-9]+$/.test(pick) || !Number.isSafeInteger(index)) throw bad(text, `"${pick}" is not an image index (@0, @1, …)`);
    return { transport: 'docker-archive', path, index, text };
  }
  const { name, tag } = splitNameTag(text, pick);
  if (tag === undefined) throw bad(text, `"${pick}" needs a tag: docker-archive:PATH:NAME:TAG`);
  return { transport: 'docker-archive', path, name, tag, text };
}

function parseOci(text: string, transport: 'oci' | 'oci-archive', rest: string): ImageReference {
  const colon = rest.indexOf(':');
  const path = colon < 0 ? rest : rest.slice(0, colon);
  if (path === '') throw bad(text, `${transport}: needs a ${transport === 'oci' ? 'directory' : 'path'}`);
  if (colon < 0) return { transport, path, text };
  const ref = rest.slice(colon + 1);
  // image-spec: ref names are made of alphanumerics and -._:@/+ (the annotation's grammar)
  if (!/^[A-Za-z0-9]+(?:[-._:@/+]+[A-Za-z0-9]+)*$/.test(ref)) throw bad(text, `"${ref}" is not a valid OCI ref name`);
  return { transport, path, ref, text };
}

function parseDocker(text: string, rest: string): ImageReference {
  let remainder = rest;
  let digest: string | undefined;
  const at = remainder.indexOf('@');
  if (at >= 0) {
    digest = remainder.slice(at + 1);
    remainder = remainder.slice(0, at);
    if (!isDigest(digest)) throw bad(text, `"${digest}" is not a sha256 digest (sha256:<64 lowercase hex digits>)`);
  }
  const { name, tag } = splitNameTag(text, remainder);
  const slash = name.indexOf('/');
  const first = slash < 0 ? '' : name.slice(0, slash);
  const isHost = first !== '' && (first.includes('.') || first.includes(':') || first === 'localhost');
  let domain = isHost ? first : DOCKER_HUB;
  let repository = isHost ? name.slice(slash + 1) : name;
  if (domain === 'index.docker.io') domain = DOCKER_HUB;
  if (domain === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`;
  const registry = domain === DOCKER_HUB ? DOCKER_HUB_REGISTRY : domain;
  const result: ImageReference = {
    transport: 'docker',
    name: `${domain}/${repository}`,
    registry,
    repository,
    registryRef: `${registry}/${repository}${digest ? `@${digest}` : `:${tag ?? 'latest'}`}`,
    text,
  };
  if (digest) result.digest = digest;
  if (tag !== undefined || !digest) result.tag = tag ?? 'latest';
  return result;
}

/** "host:5000/a/b:tag" → name "host:5000/a/b", tag "tag"; validates both. */
export function splitNameTag(text: string, value: string): { name: string; tag?: string } {
  const lastSlash = value.lastIndexOf('/');
  const colon = value.indexOf(':', lastSlash + 1);
  const name = colon < 0 ? value : value.slice(0, colon);
  const tag = colon < 0 ? undefined : value.slice(colon + 1);
  validateName(text, name);
  if (tag !== undefined && !isValidTag(tag)) throw bad(text, `"${tag}" is not a valid tag`);
  return tag === undefined ? { name } : { name, tag };
}

function validateName(text: string, name: string): void {
  if (name === '') throw bad(text, 'the image name is empty');
  const parts = name.split('/');
  const first = parts[0]!;
  const hasHost = parts.length > 1 && looksLikeHost(first);
  if (hasHost && !REGISTRY_HOST.test(first)) throw bad(text, `"${first}" is not a valid registry host`);
  for (const part of hasHost ? parts.slice(1) : parts) {
    if (!PATH_COMPONENT.test(part)) {
      throw bad(text, `"${name}" is not a valid image name (lowercase letters, digits, and . _ - between them)`);
    }
  }
}

/** True when "name:tag" is a well-formed tagged image name, as written in RepoTags. */
export function isRepoTag(value: string): boolean {
  try {
    return splitNameTag(value, value).tag !== undefined;
  } catch {
    return false;
  }
}

/** The forms under which a repo tag may be written: "foo:1", "docker.io/library/foo:1", "localhost/foo:1" are one image name. */
export function normalizeRepoTag(value: string): string {
  for (const prefix of ['docker.io/library/', 'docker.io/', 'index.docker.io/library/', 'localhost/']) {
    if (value.startsWith(prefix) && value.slice(prefix.length).includes(':')) return value.slice(prefix.length);
  }
  return value;
}

function bad(text: string, why: string): ImageReferenceError {
  return new ImageReferenceError(`invalid image reference "${text}": ${why}`, { source: text });
}
