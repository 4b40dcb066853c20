// RUN --mount=type=bind|cache|tmpfs|secret,… as BuildKit reads it (instructions/commands_runmount.go
// and dockerfile2llb/convert_runmount.go): comma-separated key=value fields, each value expanded, the
// defaults BuildKit gives (bind read-only from the context, cache id = its target, secret at
// /run/secrets/ID). `type=ssh` is refused: the build VM has no agent to forward.
import { posix } from 'node:path';
import type { FileSource, RunMount } from '../../plan/plan.js';

export class MountError extends Error {}

const KEYS = new Set([
  'type', 'from', 'source', 'src', 'target', 'dst', 'destination', 'readonly', 'ro', 'readwrite', 'rw',
  'id', 'sharing', 'required', 'size', 'mode', 'uid', 'gid', 'env',
]);

interface MountFields {
  type: 'bind' | 'cache' | 'tmpfs' | 'secret';
  from?: string;
  source?: string;
  target?: string;
  readonly?: boolean;
  id?: string;
  sharing?: 'shared' | 'private' | 'locked';
  required?: boolean;
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  env?: string;
}

export interface MountContext {
  /** expands a field's value (the stage's ARGs and ENV) */
  expand: (value: string) => string;
  /** what from= names: an earlier stage (by name or index) or an image */
  resolveFrom: (name: string) => FileSource;
  /** the working directory: a relative target is under it */
  workdir: string;
}

export function parseMount(value: string, context: MountContext): RunMount {
  const fields = parseMountFields(value, context.expand);
  const target = fields.target === undefined ? undefined : posix.resolve(context.workdir, fields.target);
  if (target === '/') throw new MountError(`invalid mount target "${fields.target}"`);
  const from = fields.from === undefined ? undefined : context.resolveFrom(fields.from);
  const requireTarget = (): string => {
    if (target === undefined) throw new MountError(`a ${fields.type} mount needs target=`);
    return target;
  };
  switch (fields.type) {
    case 'bind':
      return {
        type: 'bind',
        target: requireTarget(),
        source: posix.join('/', fields.source ?? '/'),
        from: from ?? { kind: 'context' },
        readwrite: fields.readonly === false,
      };
    case 'cache': {
      const mount: RunMount = {
        type: 'cache',
        target: requireTarget(),
        id: fields.id || posix.normalize(fields.target!),
        sharing: fields.sharing ?? 'shared',
        readonly: fields.readonly ?? false,
        mode: fields.mode ?? 0o755,
        uid: fields.uid ?? 0,
        gid: fields.gid ?? 0,
      };
      if (from) {
        mount.from = from;
        mount.source = posix.join('/', fields.source ?? '/');
      }
      return mount;
    }
    case 'tmpfs':
      return { type: 'tmpfs', target: requireTarget(), size: fields.size ?? 0 };
    case 'secret': {
      const id = fields.source || fields.id || (fields.target === undefined ? undefined : posix.basename(fields.target));
      if (!id) throw new MountError('invalid secret mount: one of source, id, target is required');
      const mount: RunMount = {
        type: 'secret',
        id,
        required: fields.required ?? false,
        mode: fields.mode ?? 0o400,
        uid: fields.uid ?? 0,
        gid: fields.gid ?? 0,
      };
      if (target !== undefined) mount.target = target;
      else if (fields.env === undefined) mount.target = `/run/secrets/${posix.basename(id)}`;
      if (fields.env !== undefined) mount.env = fields.env || id;
      return mount;
    }
  }
}

function parseMountFields(value: string, expand: (value: string) => string): MountFields {
  const fields: MountFields = { type: 'bind' };
  let readonlySet = false;
  const parseBool = (key: string, text: string): boolean => {
    const lower = text.toLowerCase();
    if (['1', 't', 'true'].includes(lower)) return true;
    if (['0', 'f', 'false'].includes(lower)) return false;
    throw new MountError(`invalid value for ${key}: ${text}`);
  };
  const parseNumber = (key: string, text: string, radix: 8 | 10): number => {
    const pattern = radix === 8 ? /^[0-7]+$/ : /^[0-9]+$/;
    if (!pattern.test(text)) throw new MountError(`invalid value ${text} for ${key}`);
    const n = parseInt(text, radix);
    if (n > 0xffffffff) throw new MountError(`invalid value ${text} for ${key}`);
    return n;
  };
  for (const field of splitCsv(value)) {
    const eq = field.indexOf('=');
    const key = (eq < 0 ? field : field.slice(0, eq)).toLowerCase();
    if (eq < 0) {
      if (key === 'readonly' || key === 'ro') fields.readonly = true;
      else if (key === 'readwrite' || key === 'rw') fields.readonly = false;
      else if (key === 'required') fields.required = true;
      else throw new MountError(`invalid field '${field}' must be a key=value pair`);
      readonlySet ||= key !== 'required';
      if (key === 'required' && fields.type !== 'secret') throw new MountError(`unexpected key 'required' for mount type '${fields.type}'`);
      continue;
    }
    if (!KEYS.has(key)) throw new MountError(`unexpected key '${key}' in '${field}'`);
    const raw = field.slice(eq + 1);
    if (key === 'from' && /\$./.test(raw)) {
      throw new MountError("'from' doesn't support variable expansion, define alias stage instead");
    }
    const text = expand(raw);
    switch (key) {
      case 'type': {
        const type = text.toLowerCase();
        if (type === 'ssh') throw new MountError('type=ssh is not supported: the build VM has no SSH agent to forward; fetch with a secret mount instead');
        if (type !== 'bind' && type !== 'cache' && type !== 'tmpfs' && type !== 'secret') {
          throw new MountError(`unsupported mount type "${text}" (bind, cache, tmpfs or secret)`);
        }
        fields.type = type;
        break;
      }
      case 'from':
        fields.from = text;
        break;
      case 'source':
      case 'src':
        fields.source = text;
        break;
      case 'target':
      case 'dst':
      case 'destination':
        fields.target = text;
        break;
      case 'readonly':
      case 'ro':
        fields.readonly = parseBool(key, text);
        readonlySet = true;
        break;
      case 'readwrite':
      case 'rw':
        fields.readonly = !parseBool(key, text);
        readonlySet = true;
        break;
      case 'required':
        if (fields.type !== 'secret') throw new MountError(`unexpected key 'required' for mount type '${fields.type}'`);
        fields.required = parseBool(key, text);
        break;
      case 'size':
        if (fields.type !== 'tmpfs') throw new MountError(`unexpected key 'size' for mount type '${fields.type}'`);
        fields.size = parseRamSize(text);
        break;
      case 'id':
        fields.id = text;
        break;
      case 'sharing': {
        const sharing = text.toLowerCase();
        if (sharing !== 'shared' && sharing !== 'private' && sharing !== 'locked') {
          throw new MountError(`unsupported sharing value "${text}" (shared, private or locked)`);
        }
        fields.sharing = sharing;
        break;
      }
      case 'mode':
        fields.mode = parseNumber(key, text, 8);
        break;
      case 'uid':
        fields.uid = parseNumber(key, text, 10);
        break;
      case 'gid':
        fields.gid = parseNumber(key, text, 10);
        break;
      case 'env':
        fields.env = text;
        break;
    }
  }
  const fileInfoAllowed = fields.type === 'secret' || fields.type === 'cache';
  for (const key of ['mode', 'uid', 'gid'] as const) {
    if (!fileInfoAllowed && fields[key] !== undefined) throw new MountError(`${key} not allowed for "${fields.type}" type mounts`);
  }
  if (!readonlySet) fields.readonly = !(fields.type === 'cache' || fields.type === 'tmpfs');
  if (fields.type === 'secret') {
    if (fields.from !== undefined) throw new MountError('secret mount should not have a from');
    if (fields.sharing !== undefined) throw new MountError('secret mount should not define sharing');
    if (fields.source && fields.id) throw new MountError("both source and id can't be set");
  }
  if (fields.sharing !== undefined && fields.type !== 'cache') throw new MountError(`invalid cache sharing set for ${fields.type} mount`);
  if (fields.id !== undefined && fields.type !== 'cache' && fields.type !== 'secret') {
    throw new MountError(`id= is only for cache and secret mounts, not ${fields.type}`);
  }
  if (fields.env !== undefined && fields.type !== 'secret') throw new MountError(`env= is only for secret mounts, not ${fields.type}`);
  return fields;
}

/** Go's csv reading of one record: commas separate, a field may be double-quoted ("" is a quote). */
export function splitCsv(value: string): string[] {
  const fields: string[] = [];
  let field = '';
  let i = 0;
  let quoted = false;
  let atStart = true;
  while (i < value.length) {
    const ch = value[i]!;
    if (quoted) {
      if (ch === '"') {
        if (value[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
      } else field += ch;
      i++;
      continue;
    }
    if (ch === ',') {
      fields.push(field);
      field = '';
      atStart = true;
      i++;
      continue;
    }
    if (ch === '"' && atStart) quoted = true;
    else field += ch;
    atStart = false;
    i++;
  }
  if (quoted) throw new MountError(`unterminated quote in mount "${value}"`);
  fields.push(field);
  return fields;
}

/** docker/go-units RAMInBytes: 64m, 1g, 512k, 100 (bytes); binary multiples. */
function parseRamSize(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$/i.exec(text.trim());
  if (!match) throw new MountError(`invalid value for size: ${text}`);
  const power = ' kmgtp'.indexOf((match[2] || ' ').toLowerCase());
  return Math.floor(Number(match[1]) * 1024 ** power);
}
