// The registry transport: open images in a registry (pull), push images to one, resolve tags to digests.
export { RegistryClient, RegistryHttpError, type RegistryOptions } from './client.js';
export { Credentials, parseCreds, findCredentials, authFiles } from './credentials.js';
export { isLoopback } from './endpoint.js';
export { fetchManifest, headManifest, resolveManifest, MANIFEST_ACCEPT, type FetchedManifest, type ResolvedManifest } from './manifest.js';
export { choosePlatform, wantedPlatform, formatPlatform, type PlatformChoice } from './platform.js';
export { openRegistryImage, isRegistryImage, RegistryLayer, type RegistryImage, type OpenRegistryImageOptions, type FetchOptions } from './registry-image.js';
export { pushImage, pushIndex, type PushOptions, type PushResult, type PushIndexResult, type PushedBlob } from './push.js';
export { resolveDigest } from './resolve.js';
export { ParallelGzip, type ParallelGzipOptions } from './parallel-gzip.js';
export { StreamingAbandoned } from './live-tar.js';
