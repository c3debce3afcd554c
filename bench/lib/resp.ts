// A minimal Redis client (RESP2 over one TCP connection, pipelined) for the failover
// benchmarks: a writer that counts acknowledged writes, and one-shot commands.
import { connect, type Socket } from 'node:net';

export type Reply = string | number | null | Error | Reply[];

/** One reply at `off`, or undefined when `buf` does not hold all of it yet. */
function parseOne(buf: Buffer, off: number): { reply: Reply; off: number } | undefined {
  const nl = buf.indexOf('\r\n', off);
  if (nl < 0) return undefined;
  const type = String.fromCharCode(buf[off]!);
  const line = buf.toString('latin1', off + 1, nl);
  switch (type) {
    case '+': return { reply: line, off: nl + 2 };
    case '-': return { reply: new Error(line), off: nl + 2 };
    case ':': return { reply: Number(line), off: nl + 2 };
    case '$': {
      const n = Number(line);
      if (n < 0) return { reply: null, off: nl + 2 };
      if (buf.length < nl + 2 + n + 2) return undefined;
      return { reply: buf.toString('utf8', nl + 2, nl + 2 + n), off: nl + 2 + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { reply: null, off: nl + 2 };
      const items: Reply[] = [];
      let o = nl + 2;
      for (let i = 0; i < n; i++) {
        const r = parseOne(buf, o);
        if (!r) return undefined;
        items.push(r.reply); o = r.off;
      }
      return { reply: items, off: o };
    }
    default: throw new Error(`unexpected RESP reply type '${type}'`);
  }
}

/** Parses as many complete replies as `buf` holds from `off`; returns them and the new offset. */
export function parseReplies(buf: Buffer, off = 0): { replies: Reply[]; off: number } {
  const replies: Reply[] = [];
  for (;;) {
    const r = off < buf.length ? parseOne(buf, off) : undefined;
    if (!r) break;
    replies.push(r.reply);
    off = r.off;
  }
  return { replies, off };
}

export function encodeCommand(args: readonly string[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
}

/** One command on a fresh connection. Rejects on a connection error, an error reply or the timeout. */
export function redisCommand(port: number, args: string[], timeoutMs = 1000): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const t = setTimeout(() => { s.destroy(); reject(new Error(`no reply from :${port} within ${timeoutMs} ms`)); }, timeoutMs);
    s.on('connect', () => s.write(encodeCommand(args)));
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const { replies } = parseReplies(buf);
      if (replies.length) {
        clearTimeout(t); s.destroy();
        const r = replies[0]!;
        if (r instanceof Error) reject(r); else resolve(r);
      }
    });
    s.on('error', (e) => { clearTimeout(t); reject(e); });
  });
}

/**
 * Writes `INCR key` as fast as the server answers, `depth` commands in flight on one
 * connection, until stopped or the connection fails. `acked` is the largest value the
 * server acknowledged: the number of writes a client was told succeeded.
 */
export class IncrWriter {
  acked = 0;
  sent = 0;
  errors = 0;
  readonly done: Promise<void>;
  #socket: Socket;
  #stopped = false;
  #buf = Buffer.alloc(0);
  #inFlight = 0;
  readonly #cmd: string;
  readonly #depth: number;

  constructor(port: number, key: string, depth = 4) {
    this.#cmd = encodeCommand(['INCR', key]);
    this.#depth = depth;
    this.#socket = connect(port, '127.0.0.1');
    this.#socket.setNoDelay(true);
    this.done = new Promise((resolve) => {
      this.#socket.on('close', () => resolve());
      this.#socket.on('error', () => undefined);
    });
    this.#socket.on('connect', () => this.#fill());
    this.#socket.on('data', (d) => {
      this.#buf = this.#buf.length ? Buffer.concat([this.#buf, d]) : d;
      const { replies, off } = parseReplies(this.#buf);
      this.#buf = this.#buf.subarray(off);
      for (const r of replies) {
        this.#inFlight--;
        if (typeof r === 'number') { if (r > this.acked) this.acked = r; } else this.errors++;
      }
      this.#fill();
    });
  }

  #fill(): void {
    while (!this.#stopped && this.#inFlight < this.#depth && !this.#socket.destroyed) {
      this.#socket.write(this.#cmd);
      this.#inFlight++;
      this.sent++;
    }
  }

  /** Stops sending; the connection closes once the replies in flight arrived (or at once). */
  async stop(): Promise<void> {
    this.#stopped = true;
    const end = Date.now() + 2000;
    while (this.#inFlight > 0 && !this.#socket.destroyed && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    this.#socket.destroy();
    await this.done;
  }
}
