// A stand-in for a standby on its own host, for the target-overhead benchmark only: it
// speaks the real protocol over the real transport (TLS 1.3 with the pre-shared key,
// framed and checksummed messages, heartbeats both ways, the heartbeat channel) and
// acknowledges every batch the moment its `end` arrives, storing nothing.
//
// What it measures: the primary's own cost on the host it protects (capture, encoding,
// TLS, sending) with the standby's decoding, storing and fsyncs taken off this machine,
// which a real two-host deployment does. Its acknowledgements are not durable: it is a
// measuring instrument, never a standby.
//
//   node discarding-standby.mjs --listen 127.0.0.1:PORT --secret-file FILE
//
// Prints one JSON line {"event":"listening",...} on stdout once it listens.
import { randomUUID } from 'node:crypto';
import { keepAliveMs, PROTOCOL_VERSION } from '../../dist/protocol/messages.js';
import { listen } from '../../dist/transport/server.js';
import { readSecretFile } from '../../dist/transport/security.js';

const arg = (name) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
const [host, port] = (arg('--listen') ?? '').split(':');
const secretFile = arg('--secret-file');
if (!host || !port || !secretFile) {
  process.stderr.write('usage: discarding-standby.mjs --listen HOST:PORT --secret-file FILE\n');
  process.exit(2);
}

let session = '';
let data; // the current data connection
const server = await listen({ host, port: Number(port), security: { kind: 'psk', key: readSecretFile(secretFile) }, heartbeatMs: 50 }, (link) => {
  link.on('message', (m) => {
    if (m.t === 'hello') {
      if (m.channel === 'beats') {
        // As the real standby does: heartbeats on the channel at the rate asked, a keep-alive
        // on the data connection.
        link.setHeartbeatMs(m.beatsMs ?? 50);
        data?.setHeartbeatMs(keepAliveMs(50));
        void link.send({ t: 'welcome', proto: PROTOCOL_VERSION, lineage: null, generation: 0, committedEpoch: 0, session: m.session }).catch(() => undefined);
      } else {
        session = randomUUID();
        data = link;
        void link.send({ t: 'welcome', proto: PROTOCOL_VERSION, lineage: null, generation: 0, committedEpoch: 0, session }).catch(() => undefined);
      }
    } else if (m.t === 'end') {
      void link.send({ t: 'ack', epoch: m.epoch, committedAt: Date.now() }).catch(() => undefined);
    } else if (m.t === 'bye') {
      void link.close('bye');
    }
  });
});
process.stdout.write(`${JSON.stringify({ event: 'listening', address: `${host}:${server.port}` })}\n`);
const stop = () => { void server.close().finally(() => process.exit(0)); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
