/**
 * Errors with a stable `code`, so that callers can act on them:
 *
 * | code                | meaning                                                          |
 * |---------------------|------------------------------------------------------------------|
 * | TARGET_GONE         | the process exited (ESRCH)                                        |
 * | PERMISSION_DENIED   | EPERM/EACCES; the message names the capability that is missing    |
 * | INVALID_TARGET      | PID 1, the agent itself, a kernel thread, a zombie, a thread ID   |
 * | BACKEND_UNAVAILABLE | the kernel lacks the requested dirty-tracking backend             |
 * | TIMEOUT             | a thread did not stop in time (it was released)                   |
 * | INVALID_ARGUMENT    | a bad option                                                      |
 * | CRIU_UNAVAILABLE    | no usable CRIU was found                                          |
 * | CRIU_FAILED         | CRIU could not dump or restore; the message quotes its log         |
 * | SYSTEM_ERROR        | any other failed system call                                      |
 */
export type ReplicateErrorCode =
  | 'TARGET_GONE'
  | 'PERMISSION_DENIED'
  | 'INVALID_TARGET'
  | 'BACKEND_UNAVAILABLE'
  | 'TIMEOUT'
  | 'INVALID_ARGUMENT'
  | 'CRIU_UNAVAILABLE'
  | 'CRIU_FAILED'
  | 'SYSTEM_ERROR';

export class ReplicateError extends Error {
  readonly code: ReplicateErrorCode;
  readonly errno?: number;
  readonly pid?: number;
  readonly op?: string;

  constructor(code: ReplicateErrorCode, message: string, extra: { errno?: number; pid?: number; op?: string; cause?: unknown } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'ReplicateError';
    this.code = code;
    if (extra.errno !== undefined) this.errno = extra.errno;
    if (extra.pid !== undefined) this.pid = extra.pid;
    if (extra.op !== undefined) this.op = extra.op;
  }
}

const CODES = new Set<string>([
  'TARGET_GONE', 'PERMISSION_DENIED', 'INVALID_TARGET', 'BACKEND_UNAVAILABLE', 'TIMEOUT', 'INVALID_ARGUMENT', 'SYSTEM_ERROR', 'CRIU_UNAVAILABLE', 'CRIU_FAILED',
]);

/**
 * Runs a native call and re-throws its error as a ReplicateError whose stack is the
 * caller's (native errors are created on the tracer thread's callback and carry no
 * useful JS stack).
 */
export async function nativeCall<T>(run: () => Promise<T>): Promise<T> {
  const site = new Error();
  try {
    return await run();
  } catch (e) {
    throw fromNative(e, site);
  }
}

export function fromNative(e: unknown, site?: Error): Error {
  if (e instanceof ReplicateError) return e;
  const n = e as { message?: string; code?: string; errno?: number; pid?: number; op?: string };
  const code = (n?.code && CODES.has(n.code) ? n.code : 'SYSTEM_ERROR') as ReplicateErrorCode;
  const err = new ReplicateError(code, n?.message ?? String(e), { errno: n?.errno, pid: n?.pid, op: n?.op });
  if (site?.stack) err.stack = `${err.name} [${code}]: ${err.message}\n${site.stack.split('\n').slice(1).join('\n')}`;
  return err;
}
