// A small stateful Node.js HTTP service for the target-overhead benchmark: an in-memory
// store of ITEMS objects; every request updates one of them (chosen by a counter, so the
// writes spread over the whole store as a real cache or session store's would) and
// answers with it as JSON. `GET /stats` answers the request count.
//
//   node http-server.mjs --port PORT [--items N]
//
// Stdio is /dev/null when started by the benchmark (spawnTarget), so that CRIU can dump it.
import { createServer } from 'node:http';

const arg = (name, def) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : def; };
const port = Number(arg('--port', '8080'));
const items = Number(arg('--items', '20000'));
const store = new Map();
for (let i = 0; i < items; i++) store.set(`item:${i}`, { id: i, hits: 0, owner: `user-${i % 977}`, tags: ['a', 'b', String(i % 13)], updated: 0 });
let requests = 0;

createServer((req, res) => {
  if (req.url === '/stats') { res.end(JSON.stringify({ requests, items: store.size })); return; }
  requests++;
  const k = `item:${(requests * 7919) % items}`;
  const v = store.get(k);
  v.hits++;
  v.updated = Date.now();
  v.note = `request ${requests} from ${req.socket.remotePort}`;
  const body = JSON.stringify(v);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}).listen(port, '127.0.0.1');
