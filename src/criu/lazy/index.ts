// Lazy (userfaultfd post-copy) restore: pages served to `criu lazy-pages` from our own store.
// See docs/lazy-pages.md.
export { LazyPageServer, LazyPageServerError, type LazyPageServerOptions, type LazyPageServerStats } from './page-server.js';
export { RunsPageSource, bufferRun, fileRun, lookupPageSource, type LazyPageSource, type PageLookupFn, type PageRun } from './page-source.js';
export { lazifyImage, readImageVmas, vmaCanBeLazy, type ImageVma, type LazifiedProcess, type LazifyOptions, type LazyRun } from './lazify.js';
export { startLazyPagesDaemon, lazyRestoreArgs, type LazyPagesDaemon, type LazyPagesDaemonOptions } from './daemon.js';
export { PsCmd, PE_LAZY, PE_PARENT, PE_PRESENT, HEADER_SIZE, PAGE_SIZE, decodeHeader, encodeHeader, type PsHeader } from './protocol.js';
