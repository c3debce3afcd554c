// Standalone check of the dirtier protocol and the Target helper (not a vitest
// file). Run: npx tsc --outDir /tmp/tt ... && node /tmp/tt/.../target.selftest.js
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildTargets } from './build-targets.js';
import { Target, killAll } from './target.js';

function parentPid(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

async function main(): Promise<void> {
  await buildTargets();
  const file = join(tmpdir(), `dirtier-selftest-${process.pid}.dat`);
  const t = await Target.spawn({ pages: 64, threads: 2, file, filePages: 8 });
  assert.notEqual(parentPid(t.pid), process.pid, 'keeper must be the parent');
  assert.equal(t.info.pages, 64);
  assert.equal(t.info.filePages, 8);
  assert.equal(t.pageAddr(2), t.info.region + 8192n);

  assert.equal(await t.cmd('w 0 5 63'), 'ok');
  assert.match(await t.cmd('w 64'), /^err /);
  assert.equal(await t.cmd('wr 10 20'), 'ok');
  assert.equal(await t.cmd('fw 0 7'), 'ok');
  assert.match(await t.cmd('fw 8'), /^err /);
  const many = Array.from({ length: 4000 }, (_, k) => k % 64).join(' ');
  assert.equal(await t.cmd(`tw 8 ${many}`), 'ok');

  const addr = await t.ok('mmap 4');
  assert.match(addr, /^[0-9a-f]+$/);
  assert.equal(await t.cmd(`wa ${addr} 4`), 'ok');
  assert.equal(await t.cmd(`mprotect ${addr} 4 r`), 'ok');
  assert.match(await t.cmd(`wa ${addr} 1`), /^err /);
  assert.equal(await t.cmd(`mprotect ${addr} 4 rw`), 'ok');
  assert.equal(await t.cmd(`madv ${addr} 4`), 'ok');
  assert.equal(await t.cmd(`mprotect ${addr} 4 none`), 'ok');
  assert.equal(await t.cmd(`munmap ${addr} 4`), 'ok');
  assert.match(await t.cmd(`wa ${addr} 1`), /^err /);

  const s1 = await t.ok('sum');
  assert.equal(await t.cmd('zero 3'), 'ok');
  const s2 = await t.ok('sum');
  assert.notEqual(s1, s2);
  assert.equal(await t.ok('sum'), s2);

  assert.equal(await t.cmd('rand 5 10'), 'ok');
  assert.equal(await t.ok('threads'), '3');
  await new Promise((r) => setTimeout(r, 100));
  const writes = Number(await t.ok('stop'));
  assert.ok(writes > 0, `rand wrote ${writes}`);
  assert.equal(await t.ok('threads'), '1');

  assert.equal(await t.cmd('spawn 200'), 'ok');
  assert.equal(await t.ok('spawnwait'), '200');
  assert.equal(await t.cmd('sleep 50'), 'ok');
  assert.match(await t.cmd('bogus'), /^err /);
  await assert.rejects(t.cmd('sleep 500', 100), /no reply/);
  assert.equal(await t.cmd('w 1'), 'ok'); // the late "sleep" reply is not mistaken for this one

  assert.equal(await t.cmd('exit 3'), 'ok');
  assert.deepEqual(await t.exited, { code: 3, signal: null });
  await assert.rejects(t.cmd('w 1'), /exited/);

  const c = await Target.spawn();
  await assert.rejects(c.cmd('crash'), /SIGSEGV/);
  assert.deepEqual(await c.exited, { code: null, signal: 'SIGSEGV' });

  const d = await Target.spawn({ viaKeeper: false });
  assert.equal(parentPid(d.pid), process.pid);
  const k = await Target.spawn();
  const pending = assert.rejects(k.cmd('sleep 5000'), /SIGKILL/);
  await killAll();
  await pending;
  assert.deepEqual(await d.exited, { code: null, signal: 'SIGKILL' });
  assert.deepEqual(await k.exited, { code: null, signal: 'SIGKILL' });
  rmSync(file, { force: true });
  console.log('target selftest: all ok');
}

main().catch(async (e) => {
  console.error(e);
  await killAll().catch(() => {});
  process.exit(1);
});
