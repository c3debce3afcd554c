import { isIP } from 'node:net';
import { ReplicateError } from '../errors.js';

export interface HostPort { host: string; port: number }

export interface ParseHostPortOptions {
  /** Used when the text has no port. Without it a port is required. */
  defaultPort?: number;
  /** Accept port 0 (listen on any free port). Default false. */
  allowPortZero?: boolean;
}

const HOSTNAME = /^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$/i;

/**
 * Parses "host:port", "[ipv6]:port", or a bare host when `defaultPort` is given:
 * `parseHostPort('standby:7070')` → { host: 'standby', port: 7070 },
 * `parseHostPort('[::1]:7070')` → { host: '::1', port: 7070 }.
 */
export function parseHostPort(text: string, options: ParseHostPortOptions = {}): HostPort {
  const bad = (why: string): never => {
    throw new ReplicateError('INVALID_ARGUMENT', `bad address ${JSON.stringify(text)}: ${why} (expected host:port, e.g. standby:7070 or [::1]:7070)`);
  };
  if (typeof text !== 'string' || text.trim() === '') bad('it is empty');
  const s = text.trim();
  let host: string;
  let portText: string | undefined;
  const bracketed = /^\[([^\]]*)\](?::(.*))?$/.exec(s);
  if (bracketed) {
    host = bracketed[1]!;
    portText = bracketed[2];
    if (isIP(host) !== 6) bad(`${host || 'nothing'} between brackets is not an IPv6 address`);
  } else {
    const colons = s.split(':').length - 1;
    if (colons > 1) bad(isIP(s) === 6 ? `put an IPv6 address in brackets: [${s}]:PORT` : 'put an IPv6 address in brackets: [ADDRESS]:PORT');
    const i = s.lastIndexOf(':');
    host = i < 0 ? s : s.slice(0, i);
    portText = i < 0 ? undefined : s.slice(i + 1);
    if (!host) bad('the host is missing');
    if (isIP(host) !== 4 && !HOSTNAME.test(host)) bad(`${JSON.stringify(host)} is not a host name or IPv4 address`);
  }
  let port: number;
  if (portText === undefined) {
    if (options.defaultPort === undefined) bad('the port is missing');
    port = options.defaultPort!;
  } else {
    if (!/^\d{1,5}$/.test(portText)) bad(portText ? `port ${JSON.stringify(portText)} is not a number` : 'the port is missing');
    port = Number(portText);
  }
  const min = options.allowPortZero ? 0 : 1;
  if (!Number.isInteger(port) || port < min || port > 65535) bad(`port ${port} is out of range (${min}-65535)`);
  return { host, port };
}

/** "host:port", with brackets around an IPv6 address. */
export function formatHostPort(host: string, port: number): string {
  return `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}

export function checkHostPort(host: unknown, port: unknown, allowPortZero: boolean): void {
  if (typeof host !== 'string' || host.trim() === '') throw new ReplicateError('INVALID_ARGUMENT', 'host is required');
  const min = allowPortZero ? 0 : 1;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < min || port > 65535) {
    throw new ReplicateError('INVALID_ARGUMENT', `port must be an integer between ${min} and 65535, got ${String(port)}`);
  }
}
