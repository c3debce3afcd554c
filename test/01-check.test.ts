// `replicate check`: probes for real and says which backend `auto` picks.
import { expect, it } from 'vitest';
import { check } from '../src/index.js';
import { native } from '../src/native/binding.js';
import { cli } from './helpers/cli.js';

it('the kernel probe reports every feature with a reason when missing', () => {
  const caps = native().probe();
  for (const f of [caps.userfaultfd, caps.uffdWpAsync, caps.pagemapScan, caps.softDirty, caps.pidfdGetfd, caps.ptrace]) {
    expect(typeof f.ok).toBe('boolean');
    if (!f.ok) expect(f.why.length).toBeGreaterThan(10);
  }
  expect(caps.xsaveSize).toBeGreaterThanOrEqual(576);
  expect(caps.release).toMatch(/^\d+\.\d+/);
});

it('check() finds CRIU 4.2+ and picks a backend, with its reason', async () => {
  const r = await check();
  expect(r.criu).toMatchObject({ ok: true });
  expect(r.criu.version).toMatch(/^4\.(\d+)\./);
  expect(['uffd-wp', 'soft-dirty', 'hash']).toContain(r.backend.name);
  expect(r.backend.reason.length).toBeGreaterThan(10);
  // On a kernel with async uffd-wp and PAGEMAP_SCAN, auto must choose it.
  if (r.features.userfaultfdWpAsync.ok && r.features.pagemapScan.ok && r.features.pidfdGetfd.ok) expect(r.backend.name).toBe('uffd-wp');
  expect(r.ok).toBe(r.problems.length === 0);
});

it('`replicate check --json` exits 0 here and prints the report', async () => {
  const r = await cli(['check', '--json']);
  const report = JSON.parse(r.stdout);
  expect(r.code).toBe(report.ok ? 0 : 1);
  expect(report).toHaveProperty('backend.name');
  expect(report).toHaveProperty('criu.path');
  expect(report).toHaveProperty('features.softDirty.ok');
});

it('`replicate check --criu /nonexistent` fails with the reason', async () => {
  const r = await cli(['check', '--criu', '/nonexistent/criu']);
  expect(r.code).toBe(1);
  expect(r.stdout).toMatch(/not an executable file/);
  expect(r.stdout).toMatch(/replication cannot work here/);
});

it('usage errors exit 2 and say what is wrong', async () => {
  const r = await cli(['dirty-rate', '--pid', 'abc']);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/positive integer PID/);
  const e = await cli(['dirty-rate', '--pid', '123', '--epoch', '5ms']);
  expect(e.code).toBe(2);
  expect(e.stderr).toMatch(/--epoch must be between 10ms and 1h/);
});
