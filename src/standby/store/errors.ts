// Errors of the standby's epoch store, with a stable `code`.
//
// | code      | meaning                                                                  |
// |-----------|--------------------------------------------------------------------------|
// | MISMATCH  | a batch (or setGeneration) that does not fit what is committed            |
// | LOCKED    | another live process holds the store's directory                          |
// | CORRUPT   | the manifest or a live segment fails its checks                           |
// | IO        | a read, write, fsync or rename failed (the message names the file)        |
// | DISK_FULL | ENOSPC/EDQUOT while writing (the message names the file)                  |
// | STATE     | the call does not fit the object's state (batch closed, store closed)     |

export type StoreErrorCode = 'MISMATCH' | 'LOCKED' | 'CORRUPT' | 'IO' | 'DISK_FULL' | 'STATE';

export class StoreError extends Error {
  readonly code: StoreErrorCode;
  /** The file the error is about, when there is one. */
  readonly path?: string;
  /** The errno name (ENOSPC, EIO, ...) of the system error behind it. */
  readonly errno?: string;

  constructor(code: StoreErrorCode, message: string, extra: { path?: string; errno?: string; cause?: unknown } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'StoreError';
    this.code = code;
    if (extra.path !== undefined) this.path = extra.path;
    if (extra.errno !== undefined) this.errno = extra.errno;
  }
}

function errnoOf(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

/**
 * Wraps a failed file operation: ENOSPC/EDQUOT become DISK_FULL ("disk full: ... while
 * writing PATH"), anything else IO. A StoreError passes through unchanged. `doing` reads
 * like "writing the segment of epoch 12"; `after` is appended (what it means for the caller).
 */
export function ioError(e: unknown, doing: string, path: string, after = ''): StoreError {
  if (e instanceof StoreError) return e;
  const errno = errnoOf(e);
  const tail = after ? `; ${after}` : '';
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    const what = errno === 'ENOSPC' ? 'no space left on device' : 'disk quota exceeded';
    return new StoreError('DISK_FULL', `disk full (${what}) while ${doing}: ${path}${tail}`, { path, errno, cause: e });
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new StoreError('IO', `I/O error while ${doing}: ${path}: ${msg}${tail}`, { path, ...(errno ? { errno } : {}), cause: e });
}
