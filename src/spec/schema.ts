// The shape of spec.json: nixpkgs buildImage's fields, names and defaults, plus a few of dockvm's own
// (network, env, output). One zod schema checks types; src/spec/load.ts adds the checks that span fields
// and turns the result into a BuildSpec.
import * as z from 'zod';

const stringList = z.array(z.string());
const emptyObjectMap = z.record(z.string(), z.object({}).loose());

/** The image config fields dockvm checks; other fields a runtime understands are passed through. */
export const containerConfigSchema = z
  .object({
    User: z.string(),
    ExposedPorts: emptyObjectMap,
    Env: z.array(z.string().regex(/^[^=]+=/, 'expected "NAME=value"')),
    Entrypoint: stringList.nullable(),
    Cmd: stringList.nullable(),
    Volumes: emptyObjectMap,
    WorkingDir: z.string(),
    Labels: z.record(z.string(), z.string()),
    StopSignal: z.string(),
  })
  .partial()
  .loose();

const pathOrPaths = z.union([z.string().min(1), z.array(z.string().min(1))]);
const mebibytes = z.number().int().positive();
/** MiB the new layer may take (diskSize); dockvm shell's changes get as much */
export const DEFAULT_DISK_SIZE = 1024;

export const specSchema = z.strictObject({
  name: z.string(),
  tag: z.string().nullable().default(null),
  fromImage: z.string().min(1).nullable().default(null),
  fromImageName: z.string().min(1).nullable().default(null),
  fromImageTag: z.string().min(1).nullable().default(null),
  copyToRoot: pathOrPaths.nullable().default(null),
  contents: pathOrPaths.nullable().optional(),
  keepContentsDirlinks: z.boolean().default(false),
  runAsRoot: z.string().nullable().default(null),
  extraCommands: z.string().default(''),
  config: containerConfigSchema.nullable().default(null),
  architecture: z.string().min(1).optional(),
  platforms: z.array(z.string().min(1)).min(1, 'list at least one platform, e.g. ["linux/amd64", "linux/arm64"]').optional(),
  diskSize: mebibytes.default(DEFAULT_DISK_SIZE),
  buildVMMemorySize: mebibytes.min(64, 'the VM needs at least 64 MiB').default(512),
  created: z.string().default('1970-01-01T00:00:01Z'),
  uid: z.number().int().min(0).max(0xfffffffe).default(0),
  gid: z.number().int().min(0).max(0xfffffffe).default(0),
  network: z.boolean().default(false),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected a variable name'), z.string()).default({}),
  output: z.string().min(1).optional(),
});

export type SpecInput = z.input<typeof specSchema>;
export type ParsedSpec = z.output<typeof specSchema>;
