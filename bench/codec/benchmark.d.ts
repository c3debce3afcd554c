// The parts of the `benchmark` npm package (benchmark.js 2.x) that bench/codec uses.
declare module 'benchmark' {
  interface Stats { mean: number; rme: number; sample: number[]; deviation: number }
  interface Options { maxTime?: number; minSamples?: number; minTime?: number; initCount?: number }
  class Benchmark {
    constructor(name: string, fn: () => void, options?: Options);
    run(): Benchmark;
    readonly name: string;
    readonly stats: Stats;
    readonly hz: number;
    readonly error?: Error;
  }
  export default Benchmark;
}
