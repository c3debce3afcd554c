// Is the restored service really serving? A promotion counts only once its health check
// passes: `tcp:PORT` / `tcp:HOST:PORT` (a connection is accepted), `http://...` (a 2xx or
// 3xx answer), `cmd:SHELL COMMAND` (exit status 0). Polled until it passes or times out.
import { exec } from 'node:child_process';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { ReplicateError } from '../errors.js';

export type HealthCheck =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'http'; url: string }
  | { kind: 'cmd'; command: string };

export function parseHealthCheck(spec: string): HealthCheck {
  if (spec.startsWith('http://') || spec.startsWith('https://')) {
    try { return { kind: 'http', url: new URL(spec).toString() }; } catch { /* below */ }
    throw new ReplicateError('INVALID_ARGUMENT', `--health: '${spec}' is not a URL`);
  }
  if (spec.startsWith('cmd:')) {
    const command = spec.slice(4).trim();
    if (!command) throw new ReplicateError('INVALID_ARGUMENT', '--health cmd: needs a command, e.g. cmd:redis-cli -p 6379 ping');
    return { kind: 'cmd', command };
  }
  const m = /^tcp:(?:(\[[^\]]+\]|[^:]+):)?(\d{1,5})$/.exec(spec);
  if (m && Number(m[2]) >= 1 && Number(m[2]) <= 65535) return { kind: 'tcp', host: (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, ''), port: Number(m[2]) };
  throw new ReplicateError('INVALID_ARGUMENT', `--health: cannot parse '${spec}' (examples: tcp:6379, tcp:10.0.0.5:6379, http://127.0.0.1:8080/health, cmd:redis-cli ping)`);
}

export function describeHealthCheck(h: HealthCheck): string {
  return h.kind === 'tcp' ? `tcp:${h.host}:${h.port}` : h.kind === 'http' ? h.url : `cmd:${h.command}`;
}

async function once(h: HealthCheck, timeoutMs: number): Promise<string | null> {
  switch (h.kind) {
    case 'tcp':
      return new Promise((resolve) => {
        const s = connect({ host: h.host, port: h.port });
        const t = setTimeout(() => { s.destroy(); resolve('connect timed out'); }, timeoutMs);
        s.once('connect', () => { clearTimeout(t); s.destroy(); resolve(null); });
        s.once('error', (e) => { clearTimeout(t); resolve(e.message); });
      });
    case 'http': {
      try {
        const r = await fetch(h.url, { signal: AbortSignal.timeout(timeoutMs), redirect: 'manual' });
        await r.arrayBuffer().catch(() => undefined);
        return r.status >= 200 && r.status < 400 ? null : `HTTP ${r.status}`;
      } catch (e) {
        return (e as Error).message;
      }
    }
    case 'cmd':
      return new Promise((resolve) => {
        exec(h.command, { timeout: timeoutMs }, (err, _out, stderr) => resolve(err ? `exit ${String((err as { code?: unknown }).code ?? err.message)}: ${String(stderr).trim().slice(0, 200)}` : null));
      });
  }
}

/** Polls `h` until it passes (resolves with the time it took) or `timeoutMs` passes (rejects with the last failure). */
export async function waitHealthy(h: HealthCheck, timeoutMs: number, signal?: AbortSignal): Promise<number> {
  const t0 = performance.now();
  let last = 'not tried';
  for (let delay = 5; ; delay = Math.min(100, delay * 2)) {
    const left = timeoutMs - (performance.now() - t0);
    if (left <= 0) break;
    const why = await once(h, Math.max(50, Math.min(2000, left)));
    if (why === null) return performance.now() - t0;
    last = why;
    if (signal?.aborted) break;
    await sleep(Math.min(delay, Math.max(0, timeoutMs - (performance.now() - t0))));
  }
  throw new ReplicateError('TIMEOUT', `health check ${describeHealthCheck(h)} did not pass within ${timeoutMs} ms (last: ${last})`);
}
