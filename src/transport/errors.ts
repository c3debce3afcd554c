/**
 * Errors of the replication link, with a stable `code`:
 *
 * | code                  | meaning                                                              |
 * |-----------------------|----------------------------------------------------------------------|
 * | AUTH_FAILED           | the TLS handshake failed: wrong pre-shared key, untrusted certificate |
 * | REFUSED               | nobody listens there, or the host cannot be reached or resolved       |
 * | TIMEOUT               | connecting (TCP + TLS handshake) took longer than allowed             |
 * | PROTOCOL              | the peer sent bytes that are not valid frames (see FrameError.reason) |
 * | CLOSED                | the link is closed                                                    |
 * | INSECURE_NOT_LOOPBACK | plain TCP was requested for an address that is not loopback           |
 */
export type TransportErrorCode = 'AUTH_FAILED' | 'REFUSED' | 'TIMEOUT' | 'PROTOCOL' | 'CLOSED' | 'INSECURE_NOT_LOOPBACK';

export class TransportError extends Error {
  readonly code: TransportErrorCode;

  constructor(code: TransportErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TransportError';
    this.code = code;
  }
}

/** Why a frame was refused. */
export type FrameErrorReason =
  /** The announced body length is above the limit (refused before buffering it). */
  | 'too-large'
  /** The CRC-32 of the body does not match the header. */
  | 'checksum'
  /** The frame is for a protocol version we do not speak. */
  | 'version'
  /** The frame's sequence number is not the next one: replayed, dropped or reordered. */
  | 'sequence'
  /** The body is not a MessagePack `[version, seq, message]` array. */
  | 'malformed'
  /** The message's `t` is not a message type we know. */
  | 'unknown-type'
  /** A field is missing, has the wrong type, is out of range, or is unexpected. */
  | 'schema';

/** A frame that cannot be accepted. The stream it came from is unusable afterwards. */
export class FrameError extends TransportError {
  readonly reason: FrameErrorReason;

  constructor(reason: FrameErrorReason, message: string, options?: { cause?: unknown }) {
    super('PROTOCOL', message, options);
    this.name = 'FrameError';
    this.reason = reason;
  }
}
