/** Nearest-rank percentile of unsorted values (p in 0..100). NaN for no values. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
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

/** The last `size` values, for percentiles over a sliding window (0 when empty). */
export class Percentiles {
  readonly #size: number;
  #values: number[] = [];
  #next = 0;

  constructor(size: number) { this.#size = size; }

  add(v: number): void {
    if (this.#values.length < this.#size) this.#values.push(v);
    else this.#values[this.#next] = v;
    this.#next = (this.#next + 1) % this.#size;
  }

  p(p: number): number { return this.#values.length ? percentile(this.#values, p) : 0; }
  max(): number { return this.#values.length ? Math.max(...this.#values) : 0; }
  get count(): number { return this.#values.length; }
}
