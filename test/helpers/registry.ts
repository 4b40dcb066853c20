// Registries for tests, all on 127.0.0.1 and all stopped when the test ends: Debian's docker-registry
// (the distribution registry) on a free port with its storage in a temp dir, open, behind htpasswd basic
// auth, or behind a token service, over HTTP or HTTPS (a certificate from a CA the test makes); that token service (JWTs signed with a throwaway key and certificate);
// and a proxy in front of a registry that flips a byte of a blob, drops a connection mid-blob, or
// answers 503, to test how clients cope.
import { spawn, type ChildProcess } from 'node:child_process';
import { createSign, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { get as httpsGet } from 'node:https';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';

export interface TestRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  port: number;
  /** the registry's storage and config */
  dir: string;
}

export interface RegistryAuth {
  /** htpasswd basic auth for this user */
  htpasswd?: { username: string; password: string };
  /** token auth through this token service */
  token?: TokenServer;
  /** serve HTTPS with this certificate and key (PEM files) */
  tls?: { certificate: string; key: string };
}

const READY_TIMEOUT_MS = 15_000;

/** A port nobody listens on right now (the registry binds it a moment later; a clash is retried). */
export async function freePort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Start docker-registry on 127.0.0.1, stopped (and its storage removed) in the test's teardown. */
export async function startRegistry(t: ExecutionContext, auth: RegistryAuth = {}): Promise<TestRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-registry-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  let authYaml = '';
  if (auth.htpasswd) {
    const { stdout } = await execa('htpasswd', ['-nbB', auth.htpasswd.username, auth.htpasswd.password]).catch((err: Error) => {
      throw new Error(`htpasswd (apache2-utils) is needed for the basic-auth registry tests: ${err.message}`);
    });
    await writeFile(join(dir, 'htpasswd'), `${String(stdout).trim()}\n`);
    authYaml = `auth:\n  htpasswd:\n    realm: dockvm-test\n    path: ${join(dir, 'htpasswd')}\n`;
  } else if (auth.token) {
    await writeFile(join(dir, 'token-cert.pem'), auth.token.certificatePem);
    authYaml =
      `auth:\n  token:\n    realm: ${auth.token.realm}\n    service: ${auth.token.service}\n` +
      `    issuer: ${auth.token.issuer}\n    rootcertbundle: ${join(dir, 'token-cert.pem')}\n`;
  }
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const config = join(dir, 'config.yml');
    await writeFile(
      config,
      'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n' +
        `storage:\n  filesystem:\n    rootdirectory: ${join(dir, 'storage')}\n  delete:\n    enabled: true\n` +
        `http:\n  addr: 127.0.0.1:${port}\n  secret: dockvm-test-${randomBytes(8).toString('hex')}\n` +
        (auth.tls ? `  tls:\n    certificate: ${auth.tls.certificate}\n    key: ${auth.tls.key}\n` : '') +
        authYaml,
    );
    const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
    t.teardown(() => stopProcess(child));
    if (await waitReady(port, auth.tls !== undefined, child)) return { host: `127.0.0.1:${port}`, port, dir };
    lastError = stderr;
    await stopProcess(child);
  }
  throw new Error(`docker-registry did not start: ${lastError.trim() || 'no output'}`);
}

/** Until the registry answers on `port` (over TLS, whatever its certificate, when `tls`). */
async function waitReady(port: number, tls: boolean, child: ChildProcess): Promise<boolean> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) return false;
    try {
      if (tls) {
        await new Promise<void>((resolve, reject) =>
          httpsGet({ host: '127.0.0.1', port, path: '/v2/', rejectUnauthorized: false }, (res) => {
            res.resume();
            resolve();
          }).once('error', reject),
        );
      } else {
        const response = await fetch(`http://127.0.0.1:${port}/v2/`);
        await response.body?.cancel();
      }
      return true;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return false;
}

/** A CA and a certificate it signed for 127.0.0.1 and localhost (PEM files in `dir`), made with openssl. */
export async function makeCertificates(dir: string): Promise<{ ca: string; certificate: string; key: string }> {
  const file = (name: string) => join(dir, name);
  await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=dockvm test CA', '-keyout', file('ca.key'), '-out', file('ca.pem')]);
  await execa('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', file('registry.key'), '-out', file('registry.csr')]);
  await writeFile(file('san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await execa('openssl', ['x509', '-req', '-in', file('registry.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', file('san.ext'), '-out', file('registry.pem')]);
  return { ca: file('ca.pem'), certificate: file('registry.pem'), key: file('registry.key') };
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

async function listen(t: ExecutionContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; port: number }> {
  const server = createServer(handler);
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { server, port: (server.address() as AddressInfo).port };
}

// ---- token service ---------------------------------------------------------------------------------

export interface TokenServer {
  realm: string;
  service: string;
  issuer: string;
  certificatePem: string;
  /** every token request: who asked (or "" for anonymous) and the scopes */
  requests: { account: string; scopes: string[] }[];
}

/**
 * A token service for the registry's token auth: users from `users` get every action they ask for;
 * anonymous callers get "pull" only where `anonymousPull` says. Wrong credentials get 401.
 */
export async function startTokenServer(
  t: ExecutionContext,
  options: { users: Record<string, string>; anonymousPull?: (repository: string) => boolean },
): Promise<TokenServer> {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-token-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=dockvm-test-token']);
  const keyPem = await readFile(keyPath, 'utf8');
  const certificatePem = await readFile(certPath, 'utf8');
  const certDer = new X509Certificate(certificatePem).raw.toString('base64');
  const service = 'dockvm-test-registry';
  const issuer = 'dockvm-test-issuer';
  const requests: TokenServer['requests'] = [];
  const { port } = await listen(t, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    let account = '';
    const header = req.headers.authorization;
    if (header?.startsWith('Basic ')) {
      const decoded = Buffer.from(header.slice(6), 'base64').toString();
      const colon = decoded.indexOf(':');
      const [user, password] = [decoded.slice(0, colon), decoded.slice(colon + 1)];
      if (options.users[user] !== password) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"incorrect username or password"}');
        return;
      }
      account = user;
    }
    const scopes = url.searchParams.getAll('scope');
    requests.push({ account, scopes });
    const access = scopes.flatMap((scope) => {
      const [type, name, actions] = scope.split(':');
      if (type !== 'repository' || !name || !actions) return [];
      const granted = account ? actions.split(',') : options.anonymousPull?.(name) ? actions.split(',').filter((a) => a === 'pull') : [];
      return granted.length ? [{ type, name, actions: granted }] : [];
    });
    const now = Math.floor(Date.now() / 1000);
    const token = signJwt({ alg: 'RS256', typ: 'JWT', x5c: [certDer] }, { iss: issuer, sub: account, aud: service, exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString('hex'), access }, keyPem);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, expires_in: 300 }));
  });
  return { realm: `http://127.0.0.1:${port}/token`, service, issuer, certificatePem, requests };
}

function signJwt(header: object, claims: object, keyPem: string): string {
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${encode(header)}.${encode(claims)}`;
  const signature = createSign('RSA-SHA256').update(input).sign(keyPem).toString('base64url');
  return `${input}.${signature}`;
}

// ---- fault proxy -----------------------------------------------------------------------------------

export interface Faults {
  /** flip one byte in the middle of this blob whenever it is sent */
  flipBlob?: string;
  /** cut the connection after this many bytes of a blob body, `dropTimes` times */
  dropBlobAfter?: number;
  dropTimes?: number;
  /** answer 503 to this many blob GETs */
  unavailableTimes?: number;
  /** drop every Range header: the registry answers whole blobs, as one that does not do ranges */
  noRange?: boolean;
  /** send this many bytes of a blob body, then nothing more until the client goes away (a link that stalls) */
  stallBlobAfter?: number;
  /** answer 503 to this many blob uploads (PATCH or PUT), at once, without reading their body */
  uploadUnavailableTimes?: number;
  /** cut the connection after this many bytes of an upload's body, `dropUploadTimes` times */
  dropUploadAfter?: number;
  dropUploadTimes?: number;
}

export interface FaultProxy {
  host: string;
  faults: Faults;
  /** every request: "METHOD path", its Range header, when it arrived (performance.now()) and the status sent */
  requests: { line: string; range?: string; at: number; status?: number }[];
}

/** An HTTP proxy to `upstream` ("127.0.0.1:PORT") that misbehaves as `faults` says (changeable during the test). */
export async function startFaultProxy(t: ExecutionContext, upstream: string, faults: Faults = {}): Promise<FaultProxy> {
  const [upstreamHost, upstreamPort] = [upstream.slice(0, upstream.lastIndexOf(':')), Number(upstream.slice(upstream.lastIndexOf(':') + 1))];
  const proxy: FaultProxy = { host: '', faults, requests: [] };
  const { port } = await listen(t, (req, res) => {
    const record: FaultProxy['requests'][number] = { line: `${req.method} ${req.url}`, ...(req.headers.range ? { range: req.headers.range } : {}), at: performance.now() };
    proxy.requests.push(record);
    const blob = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? '')?.[1];
    const isBlobGet = req.method === 'GET' && blob !== undefined;
    if (isBlobGet && (proxy.faults.unavailableTimes ?? 0) > 0) {
      proxy.faults.unavailableTimes!--;
      record.status = 503;
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAVAILABLE","message":"test proxy says 503"}]}');
      return;
    }
    const isUpload = (req.method === 'PATCH' || req.method === 'PUT') && /\/blobs\/uploads\//.test(req.url ?? '');
    if (isUpload && (proxy.faults.uploadUnavailableTimes ?? 0) > 0) {
      proxy.faults.uploadUnavailableTimes!--;
      record.status = 503;
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAVAILABLE","message":"test proxy says 503"}]}');
      req.resume();
      return;
    }
    const dropUpload = isUpload && proxy.faults.dropUploadAfter !== undefined && (proxy.faults.dropUploadTimes ?? 0) > 0;
    const headers = { ...req.headers };
    if (proxy.faults.noRange) delete headers.range;
    const upstreamRequest = httpRequest(
      { host: upstreamHost, port: upstreamPort, method: req.method, path: req.url, headers },
      (upstreamResponse) => {
        record.status = upstreamResponse.statusCode;
        res.writeHead(upstreamResponse.statusCode ?? 502, upstreamResponse.headers);
        const length = Number(upstreamResponse.headers['content-length'] ?? 0);
        const flip = isBlobGet && blob === proxy.faults.flipBlob && upstreamResponse.statusCode === 200;
        const drop = isBlobGet && proxy.faults.dropBlobAfter !== undefined && (proxy.faults.dropTimes ?? 0) > 0 && length > proxy.faults.dropBlobAfter;
        if (drop) proxy.faults.dropTimes!--;
        const stall = isBlobGet && proxy.faults.stallBlobAfter !== undefined && length > proxy.faults.stallBlobAfter ? proxy.faults.stallBlobAfter : undefined;
        let sent = 0;
        upstreamResponse.on('data', (chunk: Buffer) => {
          let data = chunk;
          if (flip && sent <= length >> 1 && length >> 1 < sent + chunk.length) {
            data = Buffer.from(chunk);
            data[(length >> 1) - sent]! ^= 0xff;
          }
          if (drop && sent + data.length > proxy.faults.dropBlobAfter!) {
            res.write(data.subarray(0, proxy.faults.dropBlobAfter! - sent), () => res.socket?.destroy());
            upstreamResponse.destroy();
            sent += data.length;
            return;
          }
          if (stall !== undefined && sent + data.length > stall) {
            res.write(data.subarray(0, Math.max(0, stall - sent))); // and the rest never comes
            upstreamResponse.destroy();
            sent = stall;
            return;
          }
          sent += data.length;
          if (!res.write(data)) {
            upstreamResponse.pause();
            res.once('drain', () => upstreamResponse.resume());
          }
        });
        upstreamResponse.on('end', () => res.end());
      },
    );
    upstreamRequest.on('error', () => res.destroy());
    if (dropUpload) {
      let received = 0;
      req.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > proxy.faults.dropUploadAfter! && !req.destroyed) {
          proxy.faults.dropUploadTimes!--;
          record.status = 0;
          upstreamRequest.destroy();
          req.socket.destroy();
        }
      });
    }
    req.pipe(upstreamRequest);
  });
  proxy.host = `127.0.0.1:${port}`;
  return proxy;
}
