// Registry credentials: from --creds USER:PASS, $REGISTRY_AUTH_FILE (podman/skopeo auth.json), the
// containers auth files, or ~/.docker/config.json ("auths", base64 "auth"; or a credential helper:
// credential-helper.ts). A password never reaches a
// message, a log line or --json: Credentials hides it from JSON.stringify, util.inspect and String().
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { UsageError } from '../../errors.js';
import { askHelper } from './credential-helper.js';

export class Credentials {
  readonly #password: string;

  constructor(
    readonly username: string,
    password: string,
    /** where they came from, for messages: "--creds", "/root/.docker/config.json" */
    readonly source: string,
  ) {
    this.#password = password;
  }

  /** The value of an `Authorization: Basic …` header. */
  basicAuthorization(): string {
    return `Basic ${Buffer.from(`${this.username}:${this.#password}`).toString('base64')}`;
  }

  toJSON(): object {
    return { username: this.username, source: this.source };
  }

  toString(): string {
    return `credentials of ${this.username} (from ${this.source})`;
  }

  [inspect.custom](): string {
    return `Credentials { username: ${JSON.stringify(this.username)}, source: ${JSON.stringify(this.source)} }`;
  }
}

/** "USER:PASS" as given to --creds. The password may contain ":"; the user may not. */
export function parseCreds(text: string): Credentials {
  const colon = text.indexOf(':');
  if (colon <= 0) throw new UsageError('--creds must be USER:PASS (dockvm does not prompt for a password)');
  return new Credentials(text.slice(0, colon), text.slice(colon + 1), '--creds');
}

/**
 * The auth files to read, most specific first, as podman and skopeo look for them: $REGISTRY_AUTH_FILE
 * (or the containers auth.json files when it is unset), then Docker's config.json.
 */
export function authFiles(env: NodeJS.ProcessEnv = process.env, home: string = homedir()): string[] {
  const files: string[] = [];
  if (env.REGISTRY_AUTH_FILE) files.push(env.REGISTRY_AUTH_FILE);
  else {
    if (env.XDG_RUNTIME_DIR) files.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
    files.push(join(env.XDG_CONFIG_HOME || join(home, '.config'), 'containers', 'auth.json'));
  }
  files.push(join(env.DOCKER_CONFIG || join(home, '.docker'), 'config.json'));
  return files;
}

/** The keys an auth file may store a registry under, for a lookup of `host`/`repository`. */
function candidateKeys(host: string, repository: string): string[] {
  // Podman allows entries per namespace ("host/org/repo", "host/org"): the longest match wins.
  const parts = repository.split('/');
  const keys: string[] = [];
  for (let n = parts.length; n >= 1; n--) keys.push(`${host}/${parts.slice(0, n).join('/')}`);
  keys.push(host);
  if (host === 'registry-1.docker.io' || host === 'docker.io' || host === 'index.docker.io') {
    keys.push('docker.io', 'index.docker.io', 'registry-1.docker.io');
    for (let n = parts.length; n >= 1; n--) keys.push(`docker.io/${parts.slice(0, n).join('/')}`);
  }
  return keys;
}

/** "https://index.docker.io/v1/" → "index.docker.io"; "host:5000" stays. */
function normalizeKey(key: string): string {
  return key.replace(/^[a-z]+:\/\//, '').replace(/\/v[12]\/?$/, '').replace(/\/$/, '');
}

/**
 * Credentials for `host` from the first auth file that has them, or undefined. In each file, as Docker
 * reads it: the registry's "credHelpers" helper, else the "credsStore" helper, else the "auths" entry.
 */
export async function findCredentials(
  host: string,
  repository: string,
  options: { files?: readonly string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<Credentials | undefined> {
  const wanted = candidateKeys(host, repository);
  for (const file of options.files ?? authFiles(options.env)) {
    const config = await readAuthFile(file);
    if (!config) continue;
    const helper = wanted.map((key) => config.credHelpers.get(key)).find((name) => name !== undefined);
    if (helper !== undefined) {
      const answer = await askHelper(helper, host, file, 'credHelpers');
      if (answer) return new Credentials(answer.username, answer.secret, answer.source);
      continue;
    }
    if (config.credsStore !== undefined) {
      const answer = await askHelper(config.credsStore, host, file, 'credsStore');
      if (answer) return new Credentials(answer.username, answer.secret, answer.source);
    }
    for (const key of wanted) {
      const entry = config.auths.get(key);
      const creds = entry && entryCredentials(entry, file);
      if (creds) return creds;
    }
  }
  return undefined;
}

interface AuthEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
}

interface AuthFile {
  /** by normalized key ("host", "host/namespace") */
  auths: Map<string, AuthEntry>;
  credHelpers: Map<string, string>;
  credsStore?: string;
}

/** An auth file's "auths", "credHelpers" and "credsStore"; a missing or unreadable file counts as none. */
async function readAuthFile(file: string): Promise<AuthFile | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  let parsed: { auths?: unknown; credHelpers?: unknown; credsStore?: unknown };
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch {
    // An auth file that is not JSON is ignored, as podman does; its content is not echoed.
    return undefined;
  }
  if (!parsed || typeof parsed !== 'object') return undefined;
  const byKey = <T>(object: unknown, keep: (value: unknown) => value is T): Map<string, T> => {
    const map = new Map<string, T>();
    if (object && typeof object === 'object') {
      for (const [key, value] of Object.entries(object)) if (keep(value) && !map.has(normalizeKey(key))) map.set(normalizeKey(key), value);
    }
    return map;
  };
  const config: AuthFile = {
    auths: byKey(parsed.auths, (value): value is AuthEntry => typeof value === 'object' && value !== null),
    credHelpers: byKey(parsed.credHelpers, (value): value is string => typeof value === 'string' && value !== ''),
  };
  if (typeof parsed.credsStore === 'string' && parsed.credsStore !== '') config.credsStore = parsed.credsStore;
  return config;
}

function entryCredentials(entry: AuthEntry, file: string): Credentials | undefined {
  if (typeof entry.auth === 'string' && entry.auth !== '') {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon > 0) return new Credentials(decoded.slice(0, colon), decoded.slice(colon + 1), file);
  }
  if (typeof entry.username === 'string' && entry.username !== '' && typeof entry.password === 'string') {
    return new Credentials(entry.username, entry.password, file);
  }
  return undefined;
}
