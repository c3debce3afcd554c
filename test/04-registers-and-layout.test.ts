// Registers, layout, brk and clocks as they must go into a CRIU image.
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { decodeGpRegisters, Tracker } from '../src/index.js';
import { native } from '../src/native/binding.js';
import { field, query, startCounter } from './helpers/counter.js';
import { killAll, Target } from './helpers/target.js';

afterEach(async () => { await killAll(); });

function readMem(pid: number, addr: bigint, len: number): Buffer {
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, addr);
    return buf;
  } finally {
    closeSync(fd);
  }
}

it('a thread blocked in read(2) is rewound to re-issue the syscall', async () => {
  const t = await Target.spawn();
  const tracker = await Tracker.attach(t.pid);
  try {
    await new Promise((r) => setTimeout(r, 50)); // the main thread waits in read() on stdin
    const e = await tracker.epoch();
    const main = e.threads.find((th) => th.tid === t.pid)!;
    expect(main.restart).toBe('restart');
    const regs = decodeGpRegisters(main.gpregs);
    expect(regs.ax).toBe(regs.orig_ax); // read is syscall 0: ax = orig_ax = 0
    expect(regs.orig_ax).toBe(0n);
    // ip points at the syscall instruction again.
    expect([...readMem(t.pid, regs.ip, 2)]).toEqual([0x0f, 0x05]);
    expect(main.xsave.length).toBe(native().probe().xsaveSize);
    expect(typeof main.sigmask).toBe('bigint');
    // Registers are sane: sp in a mapping, fs_base (TLS) set.
    expect(e.vmas.some((v) => v.start <= regs.sp && regs.sp < v.end)).toBe(true);
    expect(regs.fs_base).not.toBe(0n);
    // The target still works after the rewind (the syscall really restarts).
    await t.ok('w 1');
  } finally {
    await tracker.close();
  }
});

it('a thread in nanosleep gets EINTR (restart_block syscalls are not rewound)', async () => {
  const t = await Target.spawn();
  const tracker = await Tracker.attach(t.pid);
  try {
    const reply = t.cmd('sleep 400');
    await new Promise((r) => setTimeout(r, 100));
    const e = await tracker.epoch();
    const main = e.threads.find((th) => th.tid === t.pid)!;
    expect(main.restart).toBe('interrupted');
    expect(decodeGpRegisters(main.gpregs).ax).toBe(BigInt.asUintN(64, -4n)); // -EINTR
    expect(await reply).toBe('ok');
  } finally {
    await tracker.close();
  }
});

it('layout: the mappings of /proc/PID/maps, brk from the target, clocks read while frozen', async () => {
  const t = await Target.spawn({ pages: 64 });
  const tracker = await Tracker.attach(t.pid);
  try {
    const before = process.hrtime.bigint();
    const e = await tracker.epoch();
    const after = process.hrtime.bigint();
    // The region may have merged with a neighbouring anonymous mapping.
    const region = e.vmas.find((v) => v.start <= t.info.region && v.end >= t.info.region + 64n * 4096n)!;
    expect(region).toMatchObject({ perms: 'rw-p', path: '', inode: 0 });
    expect(e.vmas.some((v) => v.path.endsWith('/dirtier') && v.perms.includes('x'))).toBe(true);
    expect(e.vmas.some((v) => v.path === '[stack]')).toBe(true);
    const heap = e.vmas.find((v) => v.path === '[heap]');
    if (heap) {
      // maps shows brk rounded up to a page.
      expect((e.brk + 4095n) & ~4095n).toBe(heap.end);
    } else {
      expect(e.brk).toBeGreaterThan(0n);
    }
    // CLOCK_MONOTONIC is what process.hrtime reads.
    expect(e.clocks.monotonicNs).toBeGreaterThanOrEqual(before);
    expect(e.clocks.monotonicNs).toBeLessThanOrEqual(after);
    expect(e.clocks.boottimeNs).toBeGreaterThanOrEqual(e.clocks.monotonicNs);
    expect(e.timings.pauseNs).toBeGreaterThan(0);
  } finally {
    await tracker.close();
  }
});

it('descriptors: a file with its position and size, sockets classified, a TCP connection known by its link alone', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rr-fds-'));
  const c = await startCounter(dir, 'c', ['--pages', '16', '--data', join(dir, 'data.bin')]);
  const client = net.connect(c.port, '127.0.0.1');
  try {
    await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
    await new Promise((r) => setTimeout(r, 50)); // the counter has accepted it and waits for a command
    const tracker = await Tracker.attach(c.pid);
    try {
      const e = await tracker.epoch();
      const data = e.fds.find((f) => f.target === join(dir, 'data.bin'))!;
      expect(data).toMatchObject({ kind: '', size: 0, pos: 0n });
      expect(data.flags & 3).toBe(2); // O_RDWR
      const listen = e.fds.find((f) => f.kind === 'tcp-listen')!;
      expect(listen.flags & 3).toBe(2); // read from fdinfo: a listener's flags are in the base fingerprint
      const conns = e.fds.filter((f) => f.kind === 'tcp');
      expect(conns.length).toBe(1);
      expect(conns[0]!.target).toBe(`socket:[${conns[0]!.inode}]`); // the inode from the link, no stat
      expect([conns[0]!.flags, conns[0]!.pos]).toEqual([0, 0n]);   // not read inside the freeze
    } finally {
      await tracker.close();
    }
  } finally {
    client.destroy();
    await c.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});

it('an unchanged layout comes back as the same arrays; a new mapping or descriptor as new ones that match /proc', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rr-same-'));
  const c = await startCounter(dir, 'c', ['--pages', '16', '--data', join(dir, 'data.bin')]);
  try {
    const tracker = await Tracker.attach(c.pid);
    try {
      const mapsNow = () => readFileSync(`/proc/${c.pid}/maps`, 'utf8').trim().split('\n').length;
      const a = await tracker.epoch();
      const b = await tracker.epoch();
      // Nothing changed: not converted again, and the primary's state delta sees it by identity.
      expect(b.vmasSame && b.fdsSame).toBe(true);
      expect(b.vmas).toBe(a.vmas);
      expect(b.fds).toBe(a.fds);
      expect(a.vmas.length).toBe(mapsNow());
      // Shared between epochs, so read-only: sorting it in place must not change later epochs.
      expect(Object.isFrozen(a.vmas) && Object.isFrozen(a.vmas[0]) && Object.isFrozen(a.fds)).toBe(true);
      expect(() => (a.vmas as unknown[]).sort()).toThrow(TypeError);
      // An epoch without layout or descriptors neither matches nor replaces what was kept.
      const none = await tracker.epoch({ layout: false, files: false });
      expect([none.vmas.length, none.vmasSame, none.fds.length, none.fdsSame]).toEqual([0, false, 0, false]);
      expect((await tracker.epoch()).vmas).toBe(a.vmas);

      const reply = await query(c.port, 'mmap 8');
      expect(reply.startsWith('ok')).toBe(true);
      const d = await tracker.epoch();
      expect(d.vmasSame).toBe(false);
      expect(d.vmas).not.toBe(a.vmas);
      expect(d.vmas.length).toBe(mapsNow());
      const at = field(reply, 'addr');
      expect(d.vmas.some((v) => v.start <= at && v.end >= at + 8n * 4096n && v.perms === 'rw-p')).toBe(true);
      // The descriptor that served the query is gone again, so fds may match the first list;
      // opening one for good makes them differ.
      expect((await query(c.port, `logopen ${join(dir, 'log')}`)).startsWith('ok')).toBe(true);
      const f = await tracker.epoch();
      expect(f.fdsSame).toBe(false);
      expect(f.fds.some((x) => x.target === join(dir, 'log'))).toBe(true);
      expect(f.vmas).toBe(d.vmas);
    } finally {
      await tracker.close();
    }
  } finally {
    await c.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});
