// Building a CRIU image of a replicated epoch (see image-builder.ts).
export { BaseImageFiles, buildEpochImage, type BuildEpochImageOptions, type BuildEpochImageResult, type BuildTimings } from './image-builder.js';
export { ImageBuildError, type ImageBuildErrorCode } from './errors.js';
export { pagesFromRanges, type LazyPagesInput, type PageEntry, type PageLookup, type PageSource, type PageStats } from './pages.js';
export type { FileState, FilesResult } from './files.js';
export { readCpuidXsaveLayout, resolveXsaveLayout, type XsaveLayout } from './xsave.js';
export { parseImage, serializeImage, readImage, writeImage, Magic, IMG_COMMON_MAGIC, type ImageFile } from './image-file.js';
export { Message, parseFields, type Field } from './protobuf.js';
