export * from './link.js';
export * from './errors.js';
export { DEFAULT_MAX_FRAME_BYTES, encodeFrame, encodeFrameParts, FRAME_HEADER_BYTES, FrameDecoder, type FrameDecoderOptions } from './frame-codec.js';
export { MESSAGE_LIMITS, validateMessage } from './message-schema.js';
export {
  generateSecret, isLoopback, PSK_IDENTITY, readSecretFile, writeSecretFile, type SecurityOptions,
} from './security.js';
