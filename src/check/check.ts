import { chooseBackend } from '../tracker/tracker.js';
import { native, type KernelCaps } from '../native/binding.js';
import { locateCriu, type CriuInfo } from '../criu/locate.js';

export interface CheckReport {
  ok: boolean;
  /** Why replication cannot work, when ok is false. */
  problems: string[];
  kernel: string;
  arch: string;
  features: {
    userfaultfdWpAsync: { ok: boolean; why: string };
    pagemapScan: { ok: boolean; why: string };
    uffdWpFileMappings: { ok: boolean; why: string };
    softDirty: { ok: boolean; why: string };
    pidfdGetfd: { ok: boolean; why: string };
    ptrace: { ok: boolean; why: string };
  };
  backend: { name: string; reason: string };
  criu: { ok: boolean; path?: string; source?: string; version?: string; check?: string; why?: string };
}

/** Probes everything replication needs, once. Never throws: problems are reported. */
export async function check(options: { criu?: string } = {}): Promise<CheckReport> {
  const problems: string[] = [];
  let caps: KernelCaps | undefined;
  try {
    caps = native().probe();
  } catch (e) {
    problems.push((e as Error).message);
  }
  const f = (x: { ok: boolean; why: string } | undefined) => x ?? { ok: false, why: 'native addon unavailable' };
  const features = {
    userfaultfdWpAsync: f(caps?.uffdWpAsync),
    pagemapScan: f(caps?.pagemapScan),
    uffdWpFileMappings: f(caps?.uffdWpFile),
    softDirty: f(caps?.softDirty),
    pidfdGetfd: f(caps?.pidfdGetfd),
    ptrace: f(caps?.ptrace),
  };
  if (process.arch !== 'x64' || process.platform !== 'linux') problems.push(`needs Linux x86_64, this is ${process.platform} ${process.arch}`);
  if (caps && !caps.ptrace.ok) problems.push(`cannot ptrace other processes: ${caps.ptrace.why}`);
  let backend = { name: 'none', reason: 'native addon unavailable' };
  if (caps) {
    const c = chooseBackend('auto');
    backend = { name: c.name, reason: c.reason };
  }
  let criu: CheckReport['criu'];
  try {
    const info: CriuInfo = await locateCriu(options.criu);
    criu = { ok: info.versionOk && info.checkOk, path: info.path, source: info.source, version: info.version, check: lastLine(info.checkOutput) };
    if (!info.versionOk) criu.why = `version ${info.version} is older than 4.2`;
    else if (!info.checkOk) criu.why = `'criu check' failed: ${lastLine(info.checkOutput)}`;
  } catch (e) {
    criu = { ok: false, why: (e as Error).message };
  }
  if (!criu.ok) problems.push(`CRIU: ${criu.why}`);
  return { ok: problems.length === 0, problems, kernel: caps?.release ?? 'unknown', arch: process.arch, features, backend, criu };
}

/** CRIU's verdict line ("Looks good." and the like); warnings on stderr come after it. */
function lastLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean);
  const verdict = lines.filter((l) => !/^(Warn|Error)\s*\(/.test(l));
  return verdict[verdict.length - 1] ?? lines[lines.length - 1] ?? '';
}

export function formatCheck(r: CheckReport): string {
  const mark = (ok: boolean) => (ok ? 'yes' : 'no ');
  const line = (name: string, x: { ok: boolean; why: string }) => `  ${name.padEnd(34)} ${mark(x.ok)}${x.why ? `  ${x.why}` : ''}`;
  return [
    `kernel ${r.kernel} (${r.arch})`,
    line('userfaultfd async write-protect', r.features.userfaultfdWpAsync),
    line('PAGEMAP_SCAN ioctl', r.features.pagemapScan),
    line('write-protect of file mappings', r.features.uffdWpFileMappings),
    line('soft-dirty bits', r.features.softDirty),
    line('pidfd_getfd', r.features.pidfdGetfd),
    line('ptrace other processes', r.features.ptrace),
    `  ${'CRIU'.padEnd(34)} ${mark(r.criu.ok)}  ${r.criu.path ? `${r.criu.path} (${r.criu.source}) version ${r.criu.version}: ${r.criu.check || ''}` : ''}${r.criu.why ? ` ${r.criu.why}` : ''}`,
    `dirty tracking: auto chooses '${r.backend.name}': ${r.backend.reason}`,
    r.ok ? 'replication can work on this machine' : `replication cannot work here:\n${r.problems.map((p) => `  - ${p}`).join('\n')}`,
  ].join('\n');
}
