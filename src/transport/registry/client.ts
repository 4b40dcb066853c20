// A client of one repository on one registry (Docker Registry HTTP API v2) over Node's own fetch
// (and node:http for streamed uploads: stream-request.ts).
// It learns how the registry authenticates from GET /v2/ (none, Basic, or a Bearer token service),
// then sends every request already authorized: Basic credentials, or a token for the request's scopes,
// fetched once and reused until it expires. Requests that fail with a 5xx or a dropped connection are
// retried with backoff when they are safe to repeat. Credentials never appear in an error message.
import { DockvmError, RegistryError, type ErrorContext } from '../../errors.js';
import { parseChallenges, type Challenge } from './challenge.js';
import { Credentials, findCredentials, parseCreds } from './credentials.js';
import { schemesFor } from './endpoint.js';
import { streamRequest } from './stream-request.js';
import { DEFAULT_RETRY, backoff, isTransientNetworkError, isTransientStatus, networkCode, type RetryPolicy } from './retry.js';

export interface RegistryOptions {
  /**
   * false allows plain HTTP to the registry (default true: HTTPS only, except for loopback registries,
   * which may answer over HTTP as Docker allows). Certificates are always verified.
   */
  tlsVerify?: boolean;
  /** credentials (or "USER:PASS"); when absent, the auth files are searched */
  creds?: Credentials | string;
  /** the auth files to search instead of the default list ($REGISTRY_AUTH_FILE, ~/.docker/config.json, …) */
  authFiles?: readonly string[];
  /** retries of requests that fail with a 5xx or a dropped connection (default 4 attempts from 250 ms) */
  retry?: RetryPolicy;
}

export interface RequestOptions {
  /** token scopes the request needs, e.g. "repository:library/alpine:pull" (default: pull on the client's repository) */
  scopes?: readonly string[];
  headers?: Record<string, string>;
  /** a body that can be sent again (a retry or an auth round trip resends it) */
  body?: Buffer | string;
  /** a body streamed once: the request is neither retried nor re-sent after a 401 */
  stream?: AsyncIterable<Uint8Array>;
  /** status codes the caller handles itself; anything else (and an unexpected 401) is an error */
  expect: readonly number[];
  /** what the request is for, in messages: "manifest latest", "blob sha256:…" */
  what: string;
}

/** A registry answered with a status the caller did not expect (the status is kept for retry decisions). */
export class RegistryHttpError extends RegistryError {
  constructor(
    message: string,
    readonly status: number,
    context: ErrorContext = {},
  ) {
    super(message, context);
  }
}

type AuthScheme = { kind: 'none' } | { kind: 'basic' } | { kind: 'bearer'; realm: string; service?: string };

interface Token {
  value: string;
  expiresAt: number;
}

/** Tokens are renewed this long before the expiry the token service states. */
const TOKEN_MARGIN_MS = 10_000;

export class RegistryClient {
  readonly registry: string;
  readonly repository: string;
  readonly #options: RegistryOptions;
  readonly #retry: RetryPolicy;
  #base: Promise<URL> | undefined;
  #auth: AuthScheme = { kind: 'none' };
  #creds: Promise<Credentials | undefined> | undefined;
  readonly #tokens = new Map<string, Promise<Token>>();

  constructor(registry: string, repository: string, options: RegistryOptions = {}) {
    this.registry = registry;
    this.repository = repository;
    this.#options = options;
    this.#retry = options.retry ?? DEFAULT_RETRY;
  }

  /** "host/repo", for messages. */
  get name(): string {
    return `${this.registry}/${this.repository}`;
  }

  pullScope(repository = this.repository): string {
    return `repository:${repository}:pull`;
  }

  pushScope(): string {
    return `repository:${this.repository}:pull,push`;
  }

  /** The URL of an API path ("/v2/…") or of a Location header the registry sent. */
  async url(pathOrLocation: string): Promise<URL> {
    return new URL(pathOrLocation, await this.base());
  }

  /**
   * Send a request, authorized; retried on a 5xx or dropped connection when it has no one-shot stream.
   * Returns the response when its status is in `expect`; throws a RegistryError otherwise.
   */
  async request(method: string, pathOrLocation: string, options: RequestOptions): Promise<Response> {
    const url = await this.url(pathOrLocation);
    const scopes = options.scopes ?? [this.pullScope()];
    const repeatable = options.stream === undefined;
    for (let attempt = 1; ; attempt++) {
      let response: Response;
      try {
        response = await this.#send(method, url, scopes, options);
      } catch (err) {
        if (repeatable && attempt < this.#retry.attempts && isTransientNetworkError(err)) {
          await backoff(this.#retry, attempt);
          continue;
        }
        // A failure of our own (a request body that failed its digest check) is reported as it is.
        throw ownFailure(err) ?? this.networkError(err, `${method} ${options.what}`);
      }
      if (options.expect.includes(response.status)) return response;
      if (repeatable && attempt < this.#retry.attempts && isTransientStatus(response.status)) {
        await discard(response);
        await backoff(this.#retry, attempt);
        continue;
      }
      throw await this.statusError(response, options.what, scopes);
    }
  }

  /** One exchange, with the one re-send a 401 carrying a new challenge (or a stale token) deserves. */
  async #send(method: string, url: URL, scopes: readonly string[], options: RequestOptions): Promise<Response> {
    const send = async () => {
      const headers = { ...options.headers, ...(await this.#authorization(scopes)) };
      if (options.stream) return streamRequest(url, method, headers, options.stream);
      return fetch(url, { method, headers, ...(options.body !== undefined ? { body: options.body } : {}), redirect: 'follow' });
    };
    const response = await send();
    if (response.status !== 401 || options.stream !== undefined || options.expect.includes(401)) return response;
    const challenge = pickChallenge(parseChallenges(response.headers.get('www-authenticate')));
    if (!challenge) return response;
    const before = this.#auth;
    this.#adopt(challenge);
    // A Bearer challenge on a request that had a token means the token lacked a scope or expired: ask again.
    const retry = before.kind !== this.#auth.kind || this.#auth.kind === 'bearer';
    if (!retry) return response;
    if (this.#auth.kind === 'bearer') {
      this.#tokens.delete(scopeKey(scopes));
      if (before.kind === 'bearer' && !(await this.credentials())) return response;
    }
    await discard(response);
    return send();
  }

  /** Ping GET /v2/ once: settles the scheme (HTTPS, or HTTP where allowed) and how to authenticate. */
  base(): Promise<URL> {
    this.#base ??= this.#ping();
    return this.#base;
  }

  async #ping(): Promise<URL> {
    const schemes = schemesFor(this.registry, this.#options.tlsVerify !== false);
    let firstError: unknown;
    for (const scheme of schemes) {
      const base = new URL(`${scheme}://${this.registry}/`);
      for (let attempt = 1; ; attempt++) {
        let response: Response;
        try {
          response = await fetch(new URL('/v2/', base), { redirect: 'follow' });
        } catch (err) {
          const code = networkCode(err);
          // Refused, or no such host: the other scheme reaches the same port, so do not try it.
          if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN') throw this.networkError(err, 'GET /v2/');
          if (scheme === 'https' && schemes.length > 1) {
            firstError = err;
            break;
          }
          if (attempt < this.#retry.attempts && isTransientNetworkError(err)) {
            await backoff(this.#retry, attempt);
            continue;
          }
          throw this.networkError(firstError ?? err, 'GET /v2/');
        }
        await discard(response);
        // HTTPS failed on its certificate and plain HTTP is not a registry (it is the same TLS port): say why HTTPS failed.
        if (firstError !== undefined && response.status !== 200 && response.status !== 401 && isCertificateError(networkCode(firstError))) {
          throw this.networkError(firstError, 'GET /v2/');
        }
        if (response.status === 200) return base;
        if (response.status === 401) {
          const challenge = pickChallenge(parseChallenges(response.headers.get('www-authenticate')));
          if (challenge) this.#adopt(challenge);
          return base;
        }
        if (attempt < this.#retry.attempts && isTransientStatus(response.status)) {
          await backoff(this.#retry, attempt);
          continue;
        }
        throw new RegistryError(
          `${this.registry}: ${base.origin}/v2/ answered ${response.status} ${response.statusText}: this is not a Docker Registry HTTP API v2 endpoint (check the host and port)`,
          { source: this.registry },
        );
      }
    }
    throw this.networkError(firstError, 'GET /v2/');
  }

  #adopt(challenge: Challenge): void {
    if (challenge.scheme === 'bearer' && challenge.params.realm) {
      this.#auth = { kind: 'bearer', realm: challenge.params.realm, ...(challenge.params.service ? { service: challenge.params.service } : {}) };
    } else if (challenge.scheme === 'basic') {
      this.#auth = { kind: 'basic' };
    }
  }

  credentials(): Promise<Credentials | undefined> {
    this.#creds ??= (async () => {
      const { creds, authFiles } = this.#options;
      if (creds !== undefined) return typeof creds === 'string' ? parseCreds(creds) : creds;
      return findCredentials(this.registry, this.repository, authFiles ? { files: authFiles } : {});
    })();
    return this.#creds;
  }

  async #authorization(scopes: readonly string[]): Promise<Record<string, string>> {
    const auth = this.#auth;
    if (auth.kind === 'none') return {};
    if (auth.kind === 'basic') {
      const creds = await this.credentials();
      return creds ? { authorization: creds.basicAuthorization() } : {};
    }
    const key = scopeKey(scopes);
    let token = this.#tokens.get(key);
    const cached = token ? await token.catch(() => undefined) : undefined;
    if (!token || !cached || cached.expiresAt <= Date.now()) {
      token = this.#fetchToken(auth, scopes);
      this.#tokens.set(key, token);
      token.catch(() => this.#tokens.delete(key));
    }
    return { authorization: `Bearer ${(await token).value}` };
  }

  /** The token flow: GET realm?service=…&scope=…, with Basic credentials when there are any. */
  async #fetchToken(auth: { realm: string; service?: string }, scopes: readonly string[]): Promise<Token> {
    const url = new URL(auth.realm);
    if (auth.service) url.searchParams.set('service', auth.service);
    for (const scope of scopes) url.searchParams.append('scope', scope);
    const creds = await this.credentials();
    let response: Response;
    try {
      response = await fetch(url, { headers: creds ? { authorization: creds.basicAuthorization() } : {}, redirect: 'follow' });
    } catch (err) {
      throw this.networkError(err, `the token service ${url.origin}`);
    }
    if (response.status === 401 || response.status === 403) {
      await discard(response);
      throw creds ? this.rejected(creds, `the token service ${url.origin}`) : this.authRequired();
    }
    if (response.status !== 200) {
      await discard(response);
      throw new RegistryError(`${this.registry}: the token service ${url.origin}${url.pathname} answered ${response.status} ${response.statusText}`, {
        source: this.registry,
      });
    }
    const body = (await response.json().catch(() => ({}))) as { token?: unknown; access_token?: unknown; expires_in?: unknown };
    const value = typeof body.token === 'string' ? body.token : typeof body.access_token === 'string' ? body.access_token : undefined;
    if (!value) throw new RegistryError(`${this.registry}: the token service ${url.origin}${url.pathname} answered without a token`, { source: this.registry });
    // The spec's default lifetime is 60 s when the service does not say.
    const lifetime = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60;
    return { value, expiresAt: Date.now() + Math.max(lifetime * 1000 - TOKEN_MARGIN_MS, 1000) };
  }

  authRequired(): RegistryError {
    return new RegistryError(
      `${this.registry}: authentication required for ${this.repository}: give --creds USER:PASS, or log in (podman login / docker login) so that $REGISTRY_AUTH_FILE or ~/.docker/config.json holds credentials for ${this.registry}`,
      { source: this.name },
    );
  }

  rejected(creds: Credentials, by: string = this.registry): RegistryError {
    return new RegistryError(
      `${this.registry}: ${by} rejected the credentials of user "${creds.username}" (from ${creds.source}) for ${this.repository}: check the user name and password`,
      { source: this.name },
    );
  }

  /** A failed fetch, said plainly: refused, unknown host, TLS, reset. */
  networkError(err: unknown, what: string): RegistryError {
    const code = networkCode(err);
    const reason =
      code === 'ECONNREFUSED'
        ? 'connection refused: is the registry running, and is the host:port right?'
        : code === 'ENOTFOUND' || code === 'EAI_AGAIN'
          ? 'unknown host (DNS lookup failed): check the registry name and the network'
          : isCertificateError(code)
            ? `its TLS certificate is not trusted (${code}): if a private CA signed it, name the CA in NODE_EXTRA_CA_CERTS=/path/ca.pem`
            : code?.startsWith('ERR_SSL') || code?.startsWith('ERR_TLS')
              ? `TLS failed (${code}): for a registry that speaks plain HTTP use --tls-verify=false`
              : (code ?? innermostMessage(err));
    return new RegistryError(`cannot reach registry ${this.registry} (${what}): ${reason}`, { source: this.registry, cause: err });
  }

  /** An unexpected status, with the registry's own error codes ("MANIFEST_UNKNOWN: manifest unknown"). */
  async statusError(response: Response, what: string, scopes: readonly string[]): Promise<RegistryError> {
    const detail = await registryErrors(response);
    if (response.status === 401 || response.status === 403) {
      const creds = await this.credentials();
      if (!creds) return this.authRequired();
      const pushing = scopes.some((scope) => scope.endsWith(',push'));
      if (response.status === 403 || this.#auth.kind === 'bearer') {
        return new RegistryError(
          `${this.registry}: user "${creds.username}" may not ${pushing ? 'push to' : 'pull from'} ${this.repository} (${response.status}${detail ? `: ${detail}` : ''})`,
          { source: this.name },
        );
      }
      return this.rejected(creds);
    }
    return new RegistryHttpError(`${this.name}: ${what}: ${response.status} ${response.statusText}${detail ? ` (${detail})` : ''}`, response.status, {
      source: this.name,
    });
  }
}

/** OpenSSL's verdicts on a certificate it could not trust (self-signed, unknown CA, wrong name, expired). */
function isCertificateError(code: string | undefined): boolean {
  return code !== undefined && (code.includes('CERT') || code === 'ERR_TLS_CERT_ALTNAME_INVALID' || /SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ISSUER/.test(code));
}

/** "fetch failed" says nothing: the message of the deepest cause does ("bad port", "unknown scheme"). */
function innermostMessage(err: unknown): string {
  let current: unknown = err;
  let message = String(err);
  for (let depth = 0; depth < 5 && current; depth++) {
    if (current instanceof Error) message = current.message;
    current = (current as { cause?: unknown }).cause;
  }
  return message;
}

/** The DockvmError somewhere in a fetch failure's cause chain, if any. */
function ownFailure(err: unknown): DockvmError | undefined {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && current; depth++) {
    if (current instanceof DockvmError) return current;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Prefer a Bearer challenge (it carries the token service) over Basic. */
function pickChallenge(challenges: Challenge[]): Challenge | undefined {
  return challenges.find((c) => c.scheme === 'bearer' && c.params.realm) ?? challenges.find((c) => c.scheme === 'basic');
}

function scopeKey(scopes: readonly string[]): string {
  return [...scopes].sort().join(' ');
}

/** Read and drop a response body so that its connection can be reused. */
export async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // already consumed or broken: nothing to free
  }
}

/** "CODE: message; CODE: message" from a registry error body, or "". */
async function registryErrors(response: Response): Promise<string> {
  try {
    const text = await response.text();
    const body = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] };
    return (body.errors ?? [])
      .map((e) => [e.code, e.message].filter((part) => typeof part === 'string' && part !== '').join(': '))
      .filter(Boolean)
      .join('; ');
  } catch {
    return '';
  }
}
