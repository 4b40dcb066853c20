// The JSON documents of image archives and layouts, checked once on the way in so that the rest of the
// code can trust their shape. A document that fails names the archive, the document and the field.
import * as z from 'zod';
import { ImageFormatError } from '../errors.js';
import { isDigest, type Digest } from '../image/digest.js';
import type { ImageConfig } from '../image/config.js';

const digest = z.string().refine(isDigest, 'not a sha256 digest').transform((value) => value as Digest);

const platform = z.looseObject({ architecture: z.string(), os: z.string(), variant: z.string().optional() });

export const descriptorSchema = z.looseObject({
  mediaType: z.string(),
  digest,
  size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  annotations: z.record(z.string(), z.string()).optional(),
  platform: platform.optional(),
  urls: z.array(z.string()).optional(),
});
export type CheckedDescriptor = z.infer<typeof descriptorSchema>;

export const indexSchema = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
});

export const manifestSchema = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
});

/** docker-archive manifest.json: one entry per image. */
export const dockerManifestSchema = z.array(
  z.looseObject({
    Config: z.string().min(1),
    RepoTags: z.array(z.string()).nullish(),
    Layers: z.array(z.string().min(1)),
  }),
);

/** legacy docker-archive `repositories`: name → tag → top layer ID */
export const repositoriesSchema = z.record(z.string(), z.record(z.string(), z.string().regex(/^[a-f0-9]{64}$/, 'not a layer ID')));

/** legacy docker-archive `<id>/json` */
export const legacyLayerSchema = z.looseObject({
  id: z.string().optional(),
  parent: z.string().regex(/^[a-f0-9]{64}$/, 'not a layer ID').optional(),
  created: z.string().optional(),
  author: z.string().optional(),
  architecture: z.string().optional(),
  os: z.string().optional(),
  config: z.looseObject({}).nullish(),
  container_config: z.looseObject({ Cmd: z.array(z.string()).nullish() }).nullish(),
});

const configSchema = z.looseObject({
  architecture: z.string(),
  os: z.string(),
  created: z.string().optional(),
  config: z.looseObject({ Env: z.array(z.string()).nullish(), Cmd: z.array(z.string()).nullish(), Entrypoint: z.array(z.string()).nullish() }).nullish(),
  rootfs: z.looseObject({ type: z.literal('layers'), diff_ids: z.array(digest) }),
});

/** Check `value` against `schema`; `what` names the document ("img.tar: manifest.json"). */
export function check<T extends z.ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const field = issue.path.map((part) => (typeof part === 'number' ? `[${part}]` : `.${String(part)}`)).join('').replace(/^\./, '');
  throw new ImageFormatError(`${what}: ${field ? `${field}: ` : ''}${issue.message}`, { source: what, ...(field ? { field } : {}) });
}

/** An image config: the fields dockvm relies on must be there and well-formed. */
export function checkConfig(value: unknown, what: string): ImageConfig {
  check(configSchema, value, what);
  return value as ImageConfig;
}
