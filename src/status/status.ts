// `replicate status`: what a standby or a primary agent is doing, from its status file
// (and, for a standby that is not running, from its store's manifest).
import { join } from 'node:path';
import { readCommittedInfo } from '../standby/epoch-store.js';
import { formatBytes } from '../util/size.js';
import { primaryStatusPath, processAlive, readStatusFile } from './status-file.js';

/**
 * What `replicate status --json` prints. Stable fields: `role` ('primary' | 'standby'),
 * `running` (the agent is alive), `link`, `committedEpoch`, `lagMs`; primary also
 * `pauseMs` {p50, p99, max}, `bytesPerEpoch`, `compressionRatio`, `capturedEpoch`,
 * `lagEpochs`, `lagBytes`; standby also `lineage`, `generation`, `peer`, `dir`, and after a
 * promotion `promotion` { outcome, pid (restored), epoch (restored), generation,
 * timings { detectionMs, fenceMs, buildMs, restoreMs, healthMs, totalMs }, errors }.
 */
export interface Status {
  /** A standby that restored the process is 'primary' (see `promotion`); 'promoting' and 'failed' are transient or final states of a standby. */
  role: 'primary' | 'standby' | 'promoting' | 'failed';
  running: boolean;
  link: string;
  committedEpoch: number;
  lagMs: number;
  [k: string]: unknown;
}

const STALE_MS = 5000;

export async function readStatus(which: { dir: string } | { pid: number }): Promise<Status> {
  if ('dir' in which) {
    const file = await readStatusFile<Status & { pid: number; updatedAt: number }>(join(which.dir, 'status.json'));
    const alive = !!file && file.running !== false && processAlive(file.pid) && Date.now() - file.updatedAt < STALE_MS;
    if (file && alive) return { ...file, running: true };
    const info = await readCommittedInfo(which.dir);
    return {
      ...(file ?? {}), role: 'standby', running: false, link: 'down', dir: which.dir,
      committedEpoch: info?.epoch ?? 0, lineage: info?.lineage ?? null, generation: info?.generation ?? 0,
      committedAt: info?.committedAt ?? 0, pages: info?.pages ?? 0, lagMs: file?.lagMs ?? 0,
    };
  }
  const file = await readStatusFile<Status & { agentPid: number; updatedAt: number }>(primaryStatusPath(which.pid));
  if (!file) return { role: 'primary', running: false, link: 'none', committedEpoch: 0, lagMs: 0, pid: which.pid, note: `no primary agent has protected pid ${which.pid} on this host` };
  const alive = file.running !== false && processAlive(file.agentPid) && Date.now() - file.updatedAt < STALE_MS;
  return { ...file, running: alive, link: alive ? file.link : 'down' };
}

export function formatStatus(s: Status): string {
  const lines: string[] = [];
  const row = (k: string, v: unknown) => lines.push(`  ${k.padEnd(18)} ${String(v)}`);
  lines.push(`${s.role}${s.running ? '' : ' (not running)'}`);
  row('link', s.link);
  row('committed epoch', s.committedEpoch);
  row('lag', `${Math.round(s.lagMs)} ms`);
  if (s.role === 'primary') {
    const p = s.pauseMs as { p50: number; p99: number; max: number } | undefined;
    row('target pid', s.pid);
    if (p) row('pause', `p50 ${p.p50.toFixed(2)} ms, p99 ${p.p99.toFixed(2)} ms, max ${p.max.toFixed(2)} ms`);
    if (typeof s.capturedEpoch === 'number') row('captured epoch', s.capturedEpoch);
    if (typeof s.bytesPerEpoch === 'number') row('per epoch', `${Math.round(Number(s.pagesPerEpoch))} pages, ${formatBytes(s.bytesPerEpoch)}`);
    if (typeof s.compressionRatio === 'number') row('compression', `${s.compressionRatio.toFixed(2)}x`);
    if (s.standby) row('standby', s.standby);
  } else {
    const p = s.promotion as { outcome: string; pid: number | null; epoch: number; timings: Record<string, number>; errors: string[] } | null | undefined;
    if (p) {
      row('promotion', `${p.outcome}${p.pid ? `: pid ${p.pid}` : ''}, epoch ${p.epoch}${s.restoredRunning === false && p.pid ? ' (exited since)' : ''}`);
      const t = p.timings;
      row('took', `detection ${Math.round(t.detectionMs!)} ms, image ${Math.round(t.buildMs!)} ms, restore ${Math.round(t.restoreMs!)} ms, health ${Math.round(t.healthMs!)} ms, total ${Math.round(t.totalMs!)} ms`);
      if (p.errors.length && p.outcome !== 'restored') row('errors', p.errors.join(' | '));
    }
    row('dir', s.dir);
    row('lineage', s.lineage ?? '-');
    row('generation', s.generation);
    const peer = s.peer as { host: string; pid: number } | null | undefined;
    if (peer) row('primary', `${peer.host}, target pid ${peer.pid}`);
    if (typeof s.bytesPerEpoch === 'number') row('per epoch', `${Math.round(Number(s.pagesPerEpoch))} pages, ${formatBytes(s.bytesPerEpoch)}`);
    if (typeof s.compressionRatio === 'number' && s.compressionRatio) row('compression', `${s.compressionRatio.toFixed(2)}x`);
  }
  if (s.note) lines.push(`  ${String(s.note)}`);
  return lines.join('\n');
}
