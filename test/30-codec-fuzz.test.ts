// Runs the codec's mutation fuzzer (test/codec/fuzz_codec.cc) built once under
// AddressSanitizer and UndefinedBehaviorSanitizer from the addon's own codec sources. The
// binary is cached in build/codec-fuzz/ under a hash of its sources and flags.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../src/util/paths.js';

const run = promisify(execFile);

const SOURCES = ['test/codec/fuzz_codec.cc', 'native/codec/crc32c.cc', 'native/codec/page_delta.cc', 'native/codec/shadow_cache.cc', 'native/codec/delta_batch.cc', 'native/codec/large_buffer.cc'];
const HEADERS = ['native/codec/crc32c.h', 'native/codec/page_delta.h', 'native/codec/shadow_cache.h', 'native/codec/delta_batch.h', 'native/codec/large_buffer.h'];
const FLAGS = ['-std=gnu++20', '-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=undefined', '-fno-omit-frame-pointer', '-Wall', '-Wextra', '-Inative'];

/** Builds the fuzzer unless a binary of the same sources and flags exists; returns its path. */
async function buildFuzzer(): Promise<string> {
  const h = createHash('sha256');
  h.update(FLAGS.join(' '));
  for (const f of [...SOURCES, ...HEADERS]) h.update(f).update(readFileSync(join(packageRoot, f)));
  const dir = join(packageRoot, 'build', 'codec-fuzz');
  const bin = join(dir, `fuzz_codec-${h.digest('hex').slice(0, 16)}`);
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  const tmp = `${bin}.${process.pid}.tmp`;
  await run('g++', [...FLAGS, ...SOURCES, '-llz4', '-o', tmp], { cwd: packageRoot, maxBuffer: 16 << 20 });
  renameSync(tmp, bin);
  return bin;
}

describe('page-delta codec: mutation fuzzer under ASan and UBSan', () => {
  it('never crashes, never writes outside the output, always the right pages or an error', async () => {
    const bin = await buildFuzzer();
    const { stdout, stderr } = await run(bin, ['--iterations', '1200', '--seed', '20261123', '--mutations', '24'], {
      cwd: packageRoot, maxBuffer: 16 << 20, timeout: 170_000,
      env: { ...process.env, ASAN_OPTIONS: 'abort_on_error=0:halt_on_error=1:detect_leaks=1', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' },
    }).catch((e: { code?: number; stdout?: string; stderr?: string }) => {
      throw new Error(`fuzzer exited ${e.code}:\n${e.stdout ?? ''}\n${(e.stderr ?? '').slice(0, 8000)}`);
    });
    const line = stdout.trim().split('\n').pop() ?? '';
    console.log(line);
    expect(stderr).not.toMatch(/AddressSanitizer|runtime error|LeakSanitizer/);
    expect(line).toMatch(/^codec-fuzz: seed 20261123, 1200 iterations, 1200 batches decoded, 28800 mutations: \d+ refused, \d+ accepted \(\d+ identical\), 0 failures$/);
    const refused = Number(/(\d+) refused/.exec(line)![1]);
    expect(refused).toBeGreaterThan(10_000); // the mutations do reach the checks
  }, 300_000);
});
