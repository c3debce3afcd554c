// How a link is protected. The link carries a process's memory, so it is TLS 1.3 unless the
// user explicitly asks for plain TCP on loopback:
//
// - psk: both hosts hold the same 32-byte secret in a file (`remus-psk-v1 <base64>`). TLS
//   1.3 with an external pre-shared key (no certificates at all); a peer without the key
//   cannot complete the handshake. The TLS key is derived from the file's secret with HKDF
//   so the same file can key other things later without reusing key material.
// - cert: mutual TLS; each side presents a certificate signed by the CA both trust.
// - insecure: plain TCP, accepted only for loopback addresses.
import { hkdfSync, randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { BlockList, isIP, type Socket } from 'node:net';
import type { ConnectionOptions, TlsOptions } from 'node:tls';
import { ReplicateError } from '../errors.js';
import { TransportError } from './errors.js';

export type SecurityOptions =
  | { kind: 'psk'; key: Buffer }
  | { kind: 'cert'; cert: string; key: string; ca: string }
  | { kind: 'insecure' };

const SECRET_MAGIC = 'remus-psk-v1';
const SECRET_BYTES = 32;
/** The identity the client names in its handshake; the server knows no other. */
export const PSK_IDENTITY = 'remus-replicate/1';
const HKDF_INFO = 'remus-replicate v1 tls13 external psk';
// SHA-256 suites only: an external PSK is bound to a hash, and OpenSSL's default for one
// without a session is SHA-256; with a SHA-384 suite the PSK is skipped and the handshake
// fails for want of a certificate ("no suitable signature algorithm").
const PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';

// --- secret files ---------------------------------------------------------------------------

/** A new secret, as the text of a secret file. */
export function generateSecret(): string {
  return `${SECRET_MAGIC} ${randomBytes(SECRET_BYTES).toString('base64')}\n`;
}

/** Creates a secret file with a new secret, readable by its owner only. */
export function writeSecretFile(path: string, options: { force?: boolean } = {}): void {
  let fd: number;
  try {
    fd = openSync(path, options.force ? 'w' : 'wx', 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      throw new ReplicateError('INVALID_ARGUMENT', `${path} already exists: refusing to overwrite a secret (force to replace it; the other host then needs the new file)`);
    }
    throw new ReplicateError(code === 'EACCES' ? 'PERMISSION_DENIED' : 'SYSTEM_ERROR', `cannot create the secret file ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    fchmodSync(fd, 0o600); // `mode` only applies to a new file; a forced overwrite keeps the old mode
    writeSync(fd, generateSecret());
  } finally {
    closeSync(fd);
  }
}

/** Reads a secret file; returns the 32-byte secret. */
export function readSecretFile(path: string): Buffer {
  let mode: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new ReplicateError('INVALID_ARGUMENT', `secret file ${path} is not a regular file`);
    mode = st.mode;
  } catch (e) {
    if (e instanceof ReplicateError) throw e;
    throw fileError(path, e);
  }
  if ((mode & 0o077) !== 0) {
    throw new ReplicateError('INVALID_ARGUMENT',
      `secret file ${path} is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(3, '0')}): run chmod 600 ${path}`);
  }
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw fileError(path, e);
  }
  const match = /^remus-psk-v1 ([A-Za-z0-9+/]{43}=)\s*$/.exec(text);
  if (!match) {
    throw new ReplicateError('INVALID_ARGUMENT', `secret file ${path} is not a remus-replicate secret: expected one line "${SECRET_MAGIC} <44 characters of base64>"`);
  }
  return Buffer.from(match[1]!, 'base64');
}

function fileError(path: string, e: unknown): ReplicateError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new ReplicateError('INVALID_ARGUMENT', `secret file ${path} does not exist (make one on one host and copy it to the other)`, { cause: e });
  if (code === 'EACCES') return new ReplicateError('PERMISSION_DENIED', `cannot read the secret file ${path}: permission denied`, { cause: e });
  return new ReplicateError('SYSTEM_ERROR', `cannot read the secret file ${path}: ${(e as Error).message}`, { cause: e });
}

/** The TLS external PSK for a secret: HKDF-SHA256 with an info string naming its use. */
export function deriveTlsPsk(secret: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), HKDF_INFO, 32));
}

// --- checks ---------------------------------------------------------------------------------

export function checkSecurity(security: SecurityOptions | undefined): SecurityOptions {
  const s = security as Partial<Record<string, unknown>> | undefined;
  if (!s || typeof s !== 'object') throw new ReplicateError('INVALID_ARGUMENT', 'security is required: { kind: "psk" | "cert" | "insecure", ... }');
  switch (s.kind) {
    case 'psk':
      if (!Buffer.isBuffer(s.key) || s.key.length < 16) throw new ReplicateError('INVALID_ARGUMENT', 'security.key must be a Buffer of at least 16 bytes (readSecretFile gives one)');
      return security!;
    case 'cert':
      for (const f of ['cert', 'key', 'ca'] as const) {
        if (typeof s[f] !== 'string' || !s[f]) throw new ReplicateError('INVALID_ARGUMENT', `security.${f} must be the path of a PEM file`);
      }
      return security!;
    case 'insecure':
      return security!;
    default:
      throw new ReplicateError('INVALID_ARGUMENT', `security.kind must be "psk", "cert" or "insecure", got ${JSON.stringify(s.kind)}`);
  }
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** 127.0.0.0/8, ::1 (in any spelling, also ::ffff:127.x.x.x) and the name localhost. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (h === 'localhost' || h === 'localhost.') return true;
  const family = isIP(h);
  // BlockList matches IPv4-mapped IPv6 addresses against the IPv4 rules.
  return family !== 0 && LOOPBACK.check(h, family === 4 ? 'ipv4' : 'ipv6');
}

/** Throws unless plain TCP is acceptable for `host` (it must be loopback). */
export function assertInsecureAllowed(host: string, what: 'connect to' | 'listen on'): void {
  if (!isLoopback(host)) throw insecureError(host, what);
}

export function insecureError(host: string, what: 'connect to' | 'listen on'): TransportError {
  return new TransportError('INSECURE_NOT_LOOPBACK',
    `refusing to ${what} ${host} without encryption: the link carries the process's memory, and on a network anyone could read it or inject pages. ` +
    'Insecure plain TCP is only allowed on loopback (127.0.0.0/8, ::1, localhost); use a pre-shared key (a secret file) or certificates.');
}

/** The remote end as "ip:port" ("[ip]:port" for IPv6). */
export function describeRemote(socket: Socket): string {
  const address = socket.remoteAddress ?? '?';
  return `${address.includes(':') ? `[${address}]` : address}:${socket.remotePort ?? '?'}`;
}

// --- TLS options ----------------------------------------------------------------------------

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ReplicateError(code === 'ENOENT' ? 'INVALID_ARGUMENT' : code === 'EACCES' ? 'PERMISSION_DENIED' : 'SYSTEM_ERROR',
      `cannot read the ${what} ${path}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`, { cause: e });
  }
}

function certificateFiles(s: { cert: string; key: string; ca: string }): { cert: Buffer; key: Buffer; ca: Buffer } {
  return { cert: readPem(s.cert, 'certificate'), key: readPem(s.key, 'private key'), ca: readPem(s.ca, 'CA certificate') };
}

/** Options for tls.createServer; null for insecure. */
export function serverTlsOptions(security: SecurityOptions, handshakeTimeoutMs: number): TlsOptions | null {
  const common: TlsOptions = { minVersion: 'TLSv1.3', handshakeTimeout: handshakeTimeoutMs };
  switch (security.kind) {
    case 'insecure': return null;
    case 'psk': {
      const psk = deriveTlsPsk(security.key);
      return {
        ...common,
        ciphers: PSK_CIPHERS,
        pskIdentityHint: 'remus-replicate',
        pskCallback: (_socket, identity) => (identity === PSK_IDENTITY ? psk : null),
      };
    }
    case 'cert':
      return { ...common, ...certificateFiles(security), requestCert: true, rejectUnauthorized: true };
  }
}

/** Options for tls.connect (without host/port); null for insecure. */
export function clientTlsOptions(security: SecurityOptions): ConnectionOptions | null {
  const common: ConnectionOptions = { minVersion: 'TLSv1.3' };
  switch (security.kind) {
    case 'insecure': return null;
    case 'psk': {
      const psk = deriveTlsPsk(security.key);
      return {
        ...common,
        ciphers: PSK_CIPHERS,
        pskCallback: () => ({ psk, identity: PSK_IDENTITY }),
        // No certificate to check: holding the key is the proof of identity.
        checkServerIdentity: () => undefined,
      };
    }
    case 'cert':
      return { ...common, ...certificateFiles(security), rejectUnauthorized: true };
  }
}

// --- handshake failures ---------------------------------------------------------------------

const PSK_MISMATCH = "the peer's pre-shared key does not match ours (check --secret-file on both hosts)";

/** OpenSSL's reason without its prefix: "wrong version number", "sslv3 alert illegal parameter". */
export function tlsReason(err: Error): string {
  const m = /error:[0-9A-F]+:[^:]*:[^:]*:([^:\n]+)/.exec(err.message);
  return (m ? m[1]! : err.message).trim();
}

/**
 * Says in plain words why a TLS handshake failed. OpenSSL's wording differs by side: with a
 * wrong PSK the server sees "binder does not verify", the client an "illegal parameter" alert.
 */
export function describeHandshakeFailure(err: Error, security: SecurityOptions): TransportError {
  const reason = tlsReason(err);
  const text = `${(err as NodeJS.ErrnoException).code ?? ''} ${reason}`;
  const has = (re: RegExp): boolean => re.test(text);
  const fail = (message: string): TransportError => new TransportError('AUTH_FAILED', message, { cause: err });
  const certificateProblem = /unknown ca|UNKNOWN_CA|unable to (get|verify)|self[- ]signed|certificate verify failed|bad certificate|BAD_CERTIFICATE|DEPTH_ZERO|UNABLE_TO|CERT_/i;
  if (security.kind === 'psk') {
    if (has(/binder does not verify|illegal parameter|ILLEGAL_PARAMETER|BAD_PSK|psk identity/i)) return fail(PSK_MISMATCH);
    if (has(certificateProblem)) return fail(`the peer presented a certificate instead of using a pre-shared key: it is set up for certificates (${reason})`);
  }
  if (security.kind === 'cert') {
    if (has(/peer did not return a certificate|certificate required|CERTIFICATE_REQUIRED/i)) {
      return fail('the peer presented no certificate: both sides need a certificate, its key and the CA');
    }
    if (has(/altnames|Hostname\/IP does not match|ERR_TLS_CERT_ALTNAME_INVALID/i)) return fail(`the peer's certificate is not for this address: ${reason}`);
    if (has(/expired|not yet valid|CERT_HAS_EXPIRED|CERT_NOT_YET_VALID/i)) return fail(`a certificate is not valid at this time: ${reason}`);
    if (has(certificateProblem)) {
      return fail(`the peer's certificate is not signed by our CA, or ours not by its CA (check the certificate files on both hosts): ${reason}`);
    }
  }
  if (has(/wrong version number|unsupported protocol|http request|packet length too long|record layer failure|WRONG_VERSION/i)) {
    return new TransportError('PROTOCOL', `the peer does not speak TLS 1.3: is it set up for insecure plain TCP? (${reason})`, { cause: err });
  }
  if (has(/no shared cipher|no suitable signature|NO_SHARED_CIPHER|handshake failure|HANDSHAKE_FAILURE/i)) {
    return fail(`the TLS handshake failed: do both sides use the same security, pre-shared key or certificates? (${reason})`);
  }
  if (has(/TLS handshake timeout|ETIMEDOUT/)) return new TransportError('TIMEOUT', 'the TLS handshake did not finish in time', { cause: err });
  if (has(/socket disconnected before secure|ECONNRESET|EPIPE|socket hang up/i)) {
    return fail(`the peer closed the connection during the TLS handshake (wrong key or certificate, or different security settings on the two sides): ${reason}`);
  }
  return fail(`the TLS handshake failed: ${reason}`);
}
