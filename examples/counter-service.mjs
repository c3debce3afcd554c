#!/usr/bin/env node
// A small stateful HTTP service: named counters, their total and the last few requests,
// all kept in memory only. `replicate demo` protects it, kills it, and restores it on the
// standby with its state. Try it alone:
//
//   node examples/counter-service.mjs 8080 &
//   curl -X POST 'http://127.0.0.1:8080/incr?key=apples'
//   curl http://127.0.0.1:8080/state
//
//   POST /incr?key=NAME   add 1 to counter NAME; answers {"key","value","total","seq"}
//   GET  /state           answers {"pid","total","counters":{...},"recent":[...]}
//
// The port is the first argument, else $PORT, else 8080; it listens on 127.0.0.1 only.
// It writes nothing to stdio unless something goes wrong (run it with stdio going to
// files or /dev/null: a restored process must be able to reopen them).
import { createServer } from 'node:http';

const port = Number(process.argv[2] ?? process.env.PORT ?? 8080);
const RECENT = 5;

const counters = new Map(); // name -> value
let total = 0;
const recent = []; // the last RECENT increments: "#seq key"

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify(body)}\n`);
}

const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (req.method === 'POST' && url.pathname === '/incr') {
    const key = url.searchParams.get('key');
    if (!key) return send(res, 400, { error: 'missing ?key=NAME' });
    const value = (counters.get(key) ?? 0) + 1;
    counters.set(key, value);
    total += 1;
    recent.push(`#${total} ${key}`);
    if (recent.length > RECENT) recent.shift();
    return send(res, 200, { key, value, total, seq: total });
  }
  if (req.method === 'GET' && url.pathname === '/state') {
    return send(res, 200, { pid: process.pid, total, counters: Object.fromEntries(counters), recent });
  }
  send(res, 404, { error: 'try POST /incr?key=NAME or GET /state' });
});

// Keep idle client connections open a while: a service under protection does better
// with few long connections than with a new one per request.
server.keepAliveTimeout = 60_000;
server.listen(port, '127.0.0.1');
