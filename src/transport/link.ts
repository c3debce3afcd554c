// The replication link: framed, authenticated messages between a primary and its standby.
//
//   const server = await listen({ host: '0.0.0.0', port: 7070, security }, (link) => { ... });
//   const link = await connect({ host: 'standby', port: 7070, security });
//   link.on('message', (m) => ...); await link.send(m); await link.close('done');
//
// The pieces: framed-link.ts (Link over one socket), server.ts (listen), client.ts
// (connect), host-port.ts, security.ts (keys, certificates, loopback rule), frame-codec.ts.
export { Link, type HeartbeatInfo, type LinkCloseInfo, type LinkEvents, type LinkOptions } from './framed-link.js';
export { listen, ListeningServer, type ListenOptions, type ListeningServerEvents, type RejectedInfo } from './server.js';
export { connect, type ConnectOptions } from './client.js';
export { formatHostPort, parseHostPort, type HostPort, type ParseHostPortOptions } from './host-port.js';
