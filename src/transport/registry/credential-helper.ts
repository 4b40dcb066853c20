// Docker credential helpers: an auth file's "credHelpers" (one helper per registry) and "credsStore"
// (one for all) name a program docker-credential-NAME that keeps the passwords (pass, secretservice,
// ecr-login, gcloud, desktop…). `docker login` with one configured leaves "auths" without passwords, so
// without asking the helper a registry that docker and skopeo can reach would be out of reach.
// The protocol: `docker-credential-NAME get`, the server on stdin, {"Username","Secret"} on stdout.
// What a helper prints on stdout is a secret: it never reaches a message; its stderr may.
import { RegistryError, stderrTail } from '../../errors.js';

export interface HelperAnswer {
  username: string;
  secret: string;
  /** names the helper and the file that named it, for messages: "docker-credential-pass (/root/.docker/config.json)" */
  source: string;
}

/** The server name a helper is asked about: Docker Hub under its legacy URL, as `docker login` stores it. */
export function helperServer(host: string): string {
  return host === 'registry-1.docker.io' || host === 'docker.io' || host === 'index.docker.io' ? 'https://index.docker.io/v1/' : host;
}

/** Docker's helpers say this (or exit 1 with it) for a server they hold nothing for. */
const NOT_FOUND = /credentials not found|not found in (native )?keychain|no credentials/i;

/**
 * Ask `docker-credential-NAME` for `host`'s credentials; undefined when it has none. A helper that is
 * missing, fails, or answers something else is an error naming it and the file that named it.
 */
export async function askHelper(helper: string, host: string, file: string, via: 'credHelpers' | 'credsStore'): Promise<HelperAnswer | undefined> {
  const program = `docker-credential-${helper}`;
  const named = `${file} names the credential helper "${helper}" (${via})`;
  if (!/^[A-Za-z0-9._-]+$/.test(helper)) throw new RegistryError(`${named}, which is not a helper name`, { source: file });
  // loaded here: only a registry that needs credentials from a helper pays for it
  const { execa } = await import('execa');
  const result = await execa(program, ['get'], { input: helperServer(host), reject: false, timeout: 60_000, stripFinalNewline: true });
  if ((result as { code?: string }).code === 'ENOENT') {
    throw new RegistryError(`${named}, but ${program} is not on PATH: install it, or give --creds USER:PASS`, { source: file });
  }
  if (result.exitCode !== 0 || result.timedOut) {
    if (NOT_FOUND.test(result.stdout) || NOT_FOUND.test(result.stderr)) return undefined;
    const how = result.timedOut ? 'did not answer within 60 s' : `failed (exit ${result.exitCode})`;
    throw new RegistryError(`${program} ${how} when asked for ${host}'s credentials${stderrTail(result.stderr, 5)}`, { source: file });
  }
  let answer: { Username?: unknown; Secret?: unknown };
  try {
    answer = JSON.parse(result.stdout) as typeof answer;
  } catch {
    throw new RegistryError(`${program} answered something that is not JSON when asked for ${host}'s credentials`, { source: file });
  }
  const { Username: username, Secret: secret } = answer ?? {};
  if (typeof username !== 'string' || typeof secret !== 'string' || secret === '') return undefined;
  if (username === '<token>') {
    throw new RegistryError(`${program} holds an identity token for ${host}, which dockvm cannot use yet: give --creds USER:PASS (or a registry token as the password)`, { source: file });
  }
  return { username, secret, source: `${program} (${file})` };
}
