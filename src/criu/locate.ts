import { execFile } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { ReplicateError } from '../errors.js';
import { packageRoot } from '../util/paths.js';

const run = promisify(execFile);

export const MIN_CRIU: readonly [number, number] = [4, 2];

export interface CriuInfo {
  path: string;
  /** Where it was found: option, REPLICATE_CRIU, the project's build, PATH. */
  source: 'option' | 'env' | 'project' | 'path';
  version: string;
  versionOk: boolean;
  checkOk: boolean;
  checkOutput: string;
}

function executable(p: string): boolean {
  try { accessSync(p, constants.X_OK); return true; } catch { return false; }
}

/** Candidate CRIU binaries in priority order: option, REPLICATE_CRIU, the project's build, PATH. */
export function criuCandidates(option?: string): Array<{ path: string; source: CriuInfo['source'] }> {
  const out: Array<{ path: string; source: CriuInfo['source'] }> = [];
  if (option) out.push({ path: option, source: 'option' });
  if (process.env.REPLICATE_CRIU) out.push({ path: process.env.REPLICATE_CRIU, source: 'env' });
  try {
    const recorded = readFileSync(join(packageRoot, 'vendor', 'criu', 'PATH'), 'utf8').trim();
    if (recorded) out.push({ path: recorded, source: 'project' });
  } catch { /* not provisioned */ }
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir) out.push({ path: join(dir, 'criu'), source: 'path' });
  return out;
}

export function parseCriuVersion(text: string): [number, number, number] | undefined {
  const m = /Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : undefined;
}

async function inspect(path: string, source: CriuInfo['source']): Promise<CriuInfo> {
  let version = '';
  try { version = (await run(path, ['--version'])).stdout; } catch (e) { version = String((e as { stdout?: string }).stdout ?? ''); }
  const v = parseCriuVersion(version);
  const versionOk = !!v && (v[0] > MIN_CRIU[0] || (v[0] === MIN_CRIU[0] && v[1] >= MIN_CRIU[1]));
  let checkOk = false;
  let checkOutput = '';
  try {
    const r = await run(path, ['check'], { timeout: 60_000 });
    checkOk = true;
    checkOutput = (r.stdout + r.stderr).trim();
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    checkOutput = ((x.stdout ?? '') + (x.stderr ?? '') || x.message).trim();
  }
  return { path, source, version: v ? v.join('.') : 'unknown', versionOk, checkOk, checkOutput };
}

/**
 * Finds CRIU: the `criu` option, then $REPLICATE_CRIU, then the project's own build
 * (vendor/criu, made by scripts/provision-criu.sh at install), then PATH. The first
 * existing candidate is inspected (version, `criu check`); an explicit choice (option or
 * environment) is never silently skipped.
 */
export async function locateCriu(option?: string): Promise<CriuInfo> {
  const tried: string[] = [];
  for (const c of criuCandidates(option)) {
    if (!executable(c.path)) {
      if (c.source === 'option' || c.source === 'env')
        throw new ReplicateError('CRIU_UNAVAILABLE', `CRIU at ${c.path} (from ${c.source === 'env' ? 'REPLICATE_CRIU' : 'the criu option'}) is not an executable file`);
      continue;
    }
    const info = await inspect(c.path, c.source);
    if (info.versionOk || c.source === 'option' || c.source === 'env') return info;
    tried.push(`${c.path} (version ${info.version})`);
  }
  throw new ReplicateError('CRIU_UNAVAILABLE',
    `no CRIU ${MIN_CRIU.join('.')} or newer found${tried.length ? `; too old: ${tried.join(', ')}` : ''}. ` +
    `Run 'bash scripts/provision-criu.sh' (builds one into vendor/criu) or set REPLICATE_CRIU=/path/to/criu`);
}
