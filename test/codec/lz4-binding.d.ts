// The `lz4` npm package's pure-JavaScript block codec (lib/binding.js). Its main entry
// loads native helpers that npm may not have built; this file needs nothing native.
declare module 'lz4/lib/binding.js' {
  const lz4: {
    /** Compresses `src` into `dst` (at least compressBound bytes); returns the block's length, 0 when incompressible. */
    compress(src: Uint8Array, dst: Uint8Array, sIdx?: number, eIdx?: number): number;
    /** Decodes one block; returns the decoded length, negative on error. */
    uncompress(input: Uint8Array, output: Uint8Array, sIdx?: number, eIdx?: number): number;
    compressBound(n: number): number;
  };
  export default lz4;
}
