import { ReplicateError } from '../errors.js';

const UNITS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000 };

/** Parses '25ms', '1s', '1.5s', '10min', '1h' (or a bare number of ms) into milliseconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|sec|m|min|h)?\s*$/.exec(String(text));
  if (!m) throw new ReplicateError('INVALID_ARGUMENT', `${what}: cannot parse '${text}' (examples: 25ms, 1s, 10min)`);
  return Number(m[1]) * UNITS[m[2] ?? 'ms']!;
}

export function parseDurationIn(text: string, what: string, minMs: number, maxMs: number): number {
  const ms = parseDuration(text, what);
  if (ms < minMs || ms > maxMs)
    throw new ReplicateError('INVALID_ARGUMENT', `${what} must be between ${formatMs(minMs)} and ${formatMs(maxMs)}, got ${text}`);
  return ms;
}

export function formatMs(ms: number): string {
  if (ms >= 3_600_000) return `${+(ms / 3_600_000).toFixed(2)}h`;
  if (ms >= 60_000) return `${+(ms / 60_000).toFixed(2)}min`;
  if (ms >= 1000) return `${+(ms / 1000).toFixed(2)}s`;
  return `${+ms.toFixed(3)}ms`;
}
