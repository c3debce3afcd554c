// The connecting side. connect() resolves only once the peer's first frame has arrived: with
// TLS 1.3 the client finishes its handshake before the server has checked the client's
// certificate, so only a frame from the server proves that it accepted us. It also proves
// that the peer speaks this protocol.
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { ReplicateError } from '../errors.js';
import { FrameError, TransportError } from './errors.js';
import { checkLinkOptions, Link, type LinkCloseInfo, type LinkOptions } from './framed-link.js';
import { checkHostPort, formatHostPort } from './host-port.js';
import {
  assertInsecureAllowed, checkSecurity, clientTlsOptions, describeHandshakeFailure, insecureError, isLoopback, type SecurityOptions,
} from './security.js';

export interface ConnectOptions extends LinkOptions {
  host: string;
  port: number;
  security: SecurityOptions;
  /** For the TCP connection, the handshake and the peer's first frame together, ms. Default 10000. */
  timeoutMs?: number;
}

/**
 * Connects to a listening peer. Rejects with TransportError REFUSED (nobody listening,
 * unreachable, unknown host), TIMEOUT, AUTH_FAILED (wrong key or certificate), PROTOCOL (the
 * peer speaks something else) or INSECURE_NOT_LOOPBACK (before any connection attempt), or
 * ReplicateError INVALID_ARGUMENT for bad options.
 */
export async function connect(options: ConnectOptions): Promise<Link> {
  checkHostPort(options.host, options.port, false);
  const security = checkSecurity(options.security);
  const linkOptions = checkLinkOptions(options);
  const timeoutMs = options.timeoutMs ?? 10_000;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 1) {
    throw new ReplicateError('INVALID_ARGUMENT', `timeoutMs must be a positive number, got ${String(options.timeoutMs)}`);
  }
  if (security.kind === 'insecure') assertInsecureAllowed(options.host, 'connect to');
  const tlsOptions = clientTlsOptions(security);
  const target = formatHostPort(options.host, options.port);

  const socket: Socket = tlsOptions
    ? tlsConnect({ ...tlsOptions, host: options.host, port: options.port })
    : tcpConnect({ host: options.host, port: options.port });
  let link: Link | undefined;
  let timer: NodeJS.Timeout | undefined;
  let onError: ((e: Error) => void) | undefined;
  try {
    return await new Promise<Link>((resolve, reject) => {
      timer = setTimeout(() => reject(new TransportError('TIMEOUT', `could not connect to ${target} within ${timeoutMs} ms`)), timeoutMs);
      onError = (e: Error) => reject(connectError(e, target, security));
      socket.on('error', onError);
      socket.once(tlsOptions ? 'secureConnect' : 'connect', () => {
        if (!tlsOptions && !isLoopback(socket.remoteAddress ?? '')) {
          // 'localhost' resolved to something else: still no plain TCP off this host.
          reject(insecureError(`${options.host} (${socket.remoteAddress ?? '?'})`, 'connect to'));
          return;
        }
        socket.off('error', onError!); // the Link handles errors from now on
        const l = new Link(socket, linkOptions);
        link = l;
        l.ready().then(() => resolve(l), () => reject(earlyCloseError(l.closeReason, target, security)));
      });
    });
  } catch (e) {
    if (link) {
      void link.close('connect failed');
    } else {
      socket.on('error', () => undefined); // a late second error must not go unhandled
      socket.destroy();
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

function connectError(e: Error, target: string, security: SecurityOptions): TransportError {
  const code = (e as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ECONNREFUSED':
      return new TransportError('REFUSED', `${target} refused the connection: nothing listens there (is the standby running?)`, { cause: e });
    case 'ENOTFOUND': case 'EAI_AGAIN': case 'EAI_NONAME':
      return new TransportError('REFUSED', `cannot resolve the host of ${target}`, { cause: e });
    case 'EHOSTUNREACH': case 'ENETUNREACH': case 'EHOSTDOWN': case 'ENETDOWN':
      return new TransportError('REFUSED', `${target} cannot be reached (${code})`, { cause: e });
    case 'ETIMEDOUT':
      return new TransportError('TIMEOUT', `connecting to ${target} timed out`, { cause: e });
  }
  if (security.kind === 'insecure') return new TransportError('CLOSED', `connection to ${target} failed: ${e.message}`, { cause: e });
  const failure = describeHandshakeFailure(e, security);
  return new TransportError(failure.code, `${target}: ${failure.message}`, { cause: e });
}

/** The link ended before the peer's first frame: say why in the terms of connecting. */
function earlyCloseError(info: LinkCloseInfo | undefined, target: string, security: SecurityOptions): TransportError {
  const error = info?.error;
  if (error instanceof FrameError) return new TransportError('PROTOCOL', `${target} does not speak this protocol: ${error.message}`, { cause: error });
  if (error && security.kind !== 'insecure') {
    const failure = describeHandshakeFailure(error, security);
    return new TransportError(failure.code, `${target}: ${failure.message}`, { cause: error });
  }
  if (security.kind !== 'insecure' && info?.by !== 'local') {
    return new TransportError('AUTH_FAILED',
      `${target} closed the connection right after the TLS handshake: it did not accept our credentials (${info?.reason ?? 'closed'})`, { cause: error });
  }
  if (info?.by === 'peer') {
    return new TransportError('REFUSED',
      `${target} closed the connection before saying anything: does it expect TLS (a pre-shared key or certificates)? (${info.reason})`);
  }
  return new TransportError('CLOSED', `the connection to ${target} ended before the peer said anything: ${info?.reason ?? 'closed'}`, { cause: error });
}
