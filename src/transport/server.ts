// The listening side: accepts connections, completes the TLS handshake, and hands each
// authenticated connection to the owner as a Link. A failed handshake (wrong key, garbage
// instead of a ClientHello, a client that says nothing) is reported as `rejected` and never
// disturbs the server or the other links.
import { EventEmitter } from 'node:events';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { ReplicateError } from '../errors.js';
import { TransportError } from './errors.js';
import { checkLinkOptions, Link, type LinkOptions } from './framed-link.js';
import { checkHostPort, formatHostPort } from './host-port.js';
import {
  assertInsecureAllowed, checkSecurity, describeHandshakeFailure, describeRemote, insecureError, isLoopback, serverTlsOptions,
  type SecurityOptions,
} from './security.js';

export interface ListenOptions extends LinkOptions {
  host: string;
  /** 0: any free port (see `server.port`). */
  port: number;
  security: SecurityOptions;
  /** A client must finish the TLS handshake within this, ms. Default 10000. */
  handshakeTimeoutMs?: number;
  /** Called for each connection refused before it became a link. */
  onRejected?: (info: RejectedInfo) => void;
}

export interface RejectedInfo {
  /** The client, "ip:port". */
  remote: string;
  /** Why, in words. */
  reason: string;
  error: Error;
}

export interface ListeningServerEvents {
  rejected: [info: RejectedInfo];
  link: [link: Link];
}

export class ListeningServer extends EventEmitter<ListeningServerEvents> {
  readonly host: string;
  readonly port: number;
  private readonly server: TcpServer;
  private readonly openLinks = new Set<Link>();
  /** Every accepted TCP connection, links and handshakes in progress alike. */
  private readonly sockets = new Set<Socket>();
  private closing: Promise<void> | undefined;

  /** @internal Use listen(). */
  constructor(server: TcpServer, host: string, port: number) {
    super();
    this.server = server;
    this.host = host;
    this.port = port;
  }

  /** "host:port" actually listened on. */
  get address(): string {
    return formatHostPort(this.host, this.port);
  }

  get links(): ReadonlySet<Link> {
    return this.openLinks;
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** Stops accepting, closes every link (with a bye) and every handshake in progress. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
      await Promise.all([...this.openLinks].map((link) => link.close('the server is shutting down')));
      for (const socket of this.sockets) socket.destroy();
      await stopped;
    })();
    return this.closing;
  }

  /** @internal */
  track(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  /** @internal */
  adopt(link: Link, onLink: (link: Link) => void): void {
    this.openLinks.add(link);
    link.once('close', () => this.openLinks.delete(link));
    if (this.closing) {
      void link.close('the server is shutting down');
      return;
    }
    try {
      this.emit('link', link);
      onLink(link);
    } catch (e) {
      void link.close(`the server could not take the connection: ${(e as Error).message}`);
    }
  }

  /** @internal */
  reject(info: RejectedInfo, onRejected: ((info: RejectedInfo) => void) | undefined): void {
    try {
      onRejected?.(info);
      this.emit('rejected', info);
    } catch {
      // A failing observer must not take the server down.
    }
  }
}

/**
 * Listens for links. Resolves once listening; `onLink` receives each connection that passed
 * the handshake (TLS) or, in insecure mode, each connection.
 */
export async function listen(options: ListenOptions, onLink: (link: Link) => void): Promise<ListeningServer> {
  checkHostPort(options.host, options.port, true);
  const security = checkSecurity(options.security);
  const linkOptions = checkLinkOptions(options);
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
  if (!Number.isFinite(handshakeTimeoutMs) || handshakeTimeoutMs < 1) {
    throw new ReplicateError('INVALID_ARGUMENT', `handshakeTimeoutMs must be a positive number, got ${String(options.handshakeTimeoutMs)}`);
  }
  if (typeof onLink !== 'function') throw new ReplicateError('INVALID_ARGUMENT', 'listen needs an onLink callback');
  if (security.kind === 'insecure') assertInsecureAllowed(options.host, 'listen on');
  const tlsOptions = serverTlsOptions(security, handshakeTimeoutMs);

  const server: TcpServer = tlsOptions ? createTlsServer(tlsOptions) : createTcpServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((e: unknown) => {
    throw listenError(e as NodeJS.ErrnoException, formatHostPort(options.host, options.port));
  });
  const address = server.address();
  const port = address !== null && typeof address === 'object' ? address.port : options.port;
  if (!tlsOptions && !(address !== null && typeof address === 'object' && isLoopback(address.address))) {
    // 'localhost' resolved to something else: still no plain TCP off this host.
    await new Promise<void>((resolve) => server.close(() => resolve()));
    throw insecureError(`${options.host} (${typeof address === 'object' && address ? address.address : '?'})`, 'listen on');
  }
  const ls = new ListeningServer(server, options.host, port);

  // For a TLS server 'connection' is the raw TCP socket, before the handshake.
  server.on('connection', (socket: Socket) => ls.track(socket));
  if (tlsOptions) {
    server.on('secureConnection', (socket: Socket) => ls.adopt(new Link(socket, linkOptions), onLink));
    server.on('tlsClientError', (error: Error, socket: TLSSocket) => {
      // A client certificate that fails verification makes Node drop the connection after
      // the handshake, reporting only "socket hang up"; the real reason is on the socket.
      const verifyError = socket.authorizationError as unknown as string | Error | null | undefined;
      const failure = verifyError ? certificateRefused(String(verifyError), error) : describeHandshakeFailure(error, security);
      ls.reject({ remote: describeRemote(socket), reason: failure.message, error: failure }, options.onRejected);
      socket.destroy();
    });
  } else {
    server.on('connection', (socket: Socket) => {
      if (!ls.closed) ls.adopt(new Link(socket, linkOptions), onLink);
    });
  }
  // Accept failures (EMFILE...) must not crash the process: report them.
  server.on('error', (error: Error) => ls.reject({ remote: '?', reason: `accepting a connection failed: ${error.message}`, error }, options.onRejected));
  return ls;
}

function listenError(e: NodeJS.ErrnoException, where: string): ReplicateError {
  switch (e.code) {
    case 'EADDRINUSE': return new ReplicateError('SYSTEM_ERROR', `cannot listen on ${where}: the address is already in use`, { cause: e, op: 'listen' });
    case 'EADDRNOTAVAIL': return new ReplicateError('INVALID_ARGUMENT', `cannot listen on ${where}: no local interface has this address`, { cause: e, op: 'listen' });
    case 'EACCES': return new ReplicateError('PERMISSION_DENIED', `cannot listen on ${where}: permission denied`, { cause: e, op: 'listen' });
    case 'ENOTFOUND': case 'EAI_AGAIN': return new ReplicateError('INVALID_ARGUMENT', `cannot listen on ${where}: unknown host`, { cause: e, op: 'listen' });
    default: return new ReplicateError('SYSTEM_ERROR', `cannot listen on ${where}: ${e.message}`, { cause: e, op: 'listen' });
  }
}

function certificateRefused(code: string, cause: Error): TransportError {
  const untrusted = /UNABLE_TO|SELF_SIGNED|UNKNOWN_CA|CERT_UNTRUSTED|CERT_SIGNATURE_FAILURE/.test(code);
  return new TransportError('AUTH_FAILED', untrusted
    ? `the peer's certificate is not signed by our CA (check the certificate files on both hosts): ${code}`
    : `the peer's certificate was refused: ${code}`, { cause });
}
