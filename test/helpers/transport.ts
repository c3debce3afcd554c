// Helpers for transport tests: throwaway certificates, raw sockets that speak the frame
// format by hand, and a registry that closes everything a test opened.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { clientTlsOptions, type SecurityOptions } from '../../src/transport/security.js';
import type { Link, LinkCloseInfo, ListeningServer } from '../../src/transport/link.js';

/** Everything a test opens, closed in afterEach whatever happened. */
export class Cleanup {
  private readonly servers = new Set<ListeningServer>();
  private readonly links = new Set<Link>();
  private readonly sockets = new Set<Socket>();
  private readonly dirs = new Set<string>();

  server<T extends ListeningServer>(s: T): T { this.servers.add(s); return s; }
  link<T extends Link>(l: T): T { this.links.add(l); return l; }
  socket<T extends Socket>(s: T): T { this.sockets.add(s); return s; }
  dir(d: string): string { this.dirs.add(d); return d; }

  async run(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await Promise.all([...this.links].map((l) => l.close('test over')));
    await Promise.all([...this.servers].map((s) => s.close()));
    for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
    this.sockets.clear(); this.links.clear(); this.servers.clear(); this.dirs.clear();
  }
}

export interface Pki {
  dir: string;
  /** Server and client certificates signed by `ca`. */
  server: { cert: string; key: string; ca: string };
  client: { cert: string; key: string; ca: string };
  /** A client certificate signed by another CA (trusting the right CA itself). */
  rogueClient: { cert: string; key: string; ca: string };
  /** The client's certificate, but trusting only the other CA (so it rejects the server). */
  distrustfulClient: { cert: string; key: string; ca: string };
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCa(dir: string, name: string): void {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-keyout', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
}

function makeLeaf(dir: string, name: string, ca: string): void {
  writeFileSync(join(dir, `${name}.ext`), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`], dir);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial',
    '-days', '2', '-out', `${name}.pem`, '-extfile', `${name}.ext`], dir);
}

/** A CA with a server and a client certificate, and a second CA with a rogue client. */
export function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'remus-pki-'));
  makeCa(dir, 'ca');
  makeCa(dir, 'other-ca');
  makeLeaf(dir, 'server', 'ca');
  makeLeaf(dir, 'client', 'ca');
  makeLeaf(dir, 'rogue', 'other-ca');
  const files = (name: string, ca: string) => ({ cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`), ca: join(dir, `${ca}.pem`) });
  return {
    dir, server: files('server', 'ca'), client: files('client', 'ca'),
    rogueClient: files('rogue', 'ca'), distrustfulClient: files('client', 'other-ca'),
  };
}

export function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * A raw connection to a link server: plain TCP, or TLS with the right credentials but no
 * Link on top, so a test can write any bytes it likes after the handshake.
 */
export function rawConnect(port: number, security: SecurityOptions): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const tls = clientTlsOptions(security);
    const socket: Socket = tls ? tlsConnect({ ...tls, host: '127.0.0.1', port }) : tcpConnect({ host: '127.0.0.1', port });
    socket.once('error', reject);
    socket.once(tls ? 'secureConnect' : 'connect', () => {
      socket.off('error', reject);
      socket.on('error', () => undefined); // the server cutting us off is the expected outcome
      socket.resume(); // discard what the server sends (heartbeats), so its FIN is seen
      resolve(socket);
    });
  });
}

/** Resolves when the socket is closed by the other side (or errors). */
export function socketClosed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.destroyed) resolve();
    else socket.once('close', () => resolve());
  });
}

export function nextClose(link: Link): Promise<LinkCloseInfo> {
  const info = link.closeReason;
  return info ? Promise.resolve(info) : new Promise((resolve) => link.once('close', resolve));
}

/** Waits until `check` is true, polling; throws after `timeoutMs`. */
export async function waitFor(check: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
