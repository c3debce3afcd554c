/**
 * Why an image could not be built, as a stable `code`:
 *
 * | code           | meaning                                                                 |
 * |----------------|-------------------------------------------------------------------------|
 * | BASE_MISSING   | the base directory or one of its files is not there                      |
 * | BASE_INVALID   | the base is not a usable CRIU dump of one process (corrupt, incremental, |
 * |                | a process tree, a different CPU)                                         |
 * | REBASE_NEEDED  | the process changed in a way an image cannot express from this base     |
 * |                | (threads came or went, a new file mapping or file): take a new base      |
 * | INVALID_STATE  | the epoch's state is malformed (wrong PID, bad register sizes, layout)   |
 * | INVALID_PAGES  | the page source is malformed (order, size) or, with `strictPages`, has   |
 * |                | pages outside every mapping                                              |
 * | OUTPUT         | the output directory cannot be used                                      |
 */
export type ImageBuildErrorCode = 'BASE_MISSING' | 'BASE_INVALID' | 'REBASE_NEEDED' | 'INVALID_STATE' | 'INVALID_PAGES' | 'OUTPUT';

export class ImageBuildError extends Error {
  readonly code: ImageBuildErrorCode;

  constructor(code: ImageBuildErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImageBuildError';
    this.code = code;
  }
}
