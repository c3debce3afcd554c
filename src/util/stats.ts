/** Nearest-rank percentile of unsorted values (p in 0..100). NaN for no values. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  return [...values].sort((a, b) => a - b)[nearestRank(values.length, p)]!;
}

/** Index of the nearest-rank p-th percentile among n sorted values (n > 0). */
function nearestRank(n: number, p: number): number {
  return Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1));
}

export interface Summary { mean: number; p50: number; p99: number; max: number; min: number }

export function summarize(values: readonly number[]): Summary {
  const mean = values.length ? values.reduce((a, b) => a + b, 0) / values.length : Number.NaN;
  return {
    mean,
    p50: percentile(values, 50),
    p99: percentile(values, 99),
    max: values.length ? Math.max(...values) : Number.NaN,
    min: values.length ? Math.min(...values) : Number.NaN,
  };
}

/**
 * The last `size` values, for percentiles over a sliding window (0 when empty). The sorted
 * copy is kept until the next add(): p50, p99 and max of one epoch sort once, and a numeric
 * typed-array sort needs no comparator calls (this runs at every commit, 40 times a second
 * at 25 ms epochs).
 */
export class Percentiles {
  readonly #values: Float64Array;
  #count = 0;
  #next = 0;
  #sorted: Float64Array | null = null;

  constructor(size: number) { this.#values = new Float64Array(size); }

  add(v: number): void {
    this.#values[this.#next] = v;
    this.#next = (this.#next + 1) % this.#values.length;
    if (this.#count < this.#values.length) this.#count++;
    this.#sorted = null;
  }

  p(p: number): number {
    return this.#count ? this.#sortedValues()[nearestRank(this.#count, p)]! : 0;
  }

  max(): number { return this.#count ? this.#sortedValues()[this.#count - 1]! : 0; }
  get count(): number { return this.#count; }

  #sortedValues(): Float64Array {
    this.#sorted ??= this.#values.slice(0, this.#count).sort();
    return this.#sorted;
  }
}
