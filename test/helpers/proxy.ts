// A TCP proxy on loopback between a primary and a standby, for link faults: a rate
// limit (primary -> standby direction), cutting every connection, or cutting after a
// number of bytes. A side that ends its connection in order (FIN) has what it sent
// delivered first, as TCP would: a goodbye is not lost in the proxy's queue.
import { createServer, connect, type Server, type Socket } from 'node:net';

export class FaultyProxy {
  readonly server: Server;
  port = 0;
  /** Bytes per second forwarded primary -> standby; 0 = unlimited. */
  rate = 0;
  /** Forwarded bytes primary -> standby, over all connections. */
  forwarded = 0;
  connections = 0;
  #cutAt = Infinity;
  #pairs = new Set<[Socket, Socket]>();

  private constructor(readonly targetPort: number) {
    this.server = createServer({ allowHalfOpen: true }, (client) => this.#onClient(client));
  }

  static async start(targetPort: number): Promise<FaultyProxy> {
    const p = new FaultyProxy(targetPort);
    await new Promise<void>((resolve) => p.server.listen(0, '127.0.0.1', resolve));
    p.port = (p.server.address() as { port: number }).port;
    return p;
  }

  /** Cuts every connection once `bytes` more have been forwarded toward the standby. */
  cutAfter(bytes: number): void { this.#cutAt = this.forwarded + bytes; }

  /** Destroys every open connection now (both sides see a reset). */
  cutAll(): void {
    for (const [a, b] of this.#pairs) { a.destroy(); b.destroy(); }
    this.#pairs.clear();
  }

  #onClient(client: Socket): void {
    this.connections++;
    const upstream = connect({ port: this.targetPort, host: '127.0.0.1', allowHalfOpen: true });
    const pair: [Socket, Socket] = [client, upstream];
    this.#pairs.add(pair);
    const end = () => { client.destroy(); upstream.destroy(); this.#pairs.delete(pair); };
    client.on('error', end); upstream.on('error', end);
    client.on('close', end); upstream.on('close', end);
    upstream.on('data', (d) => client.write(d));
    upstream.on('end', () => client.end());
    let clientEnded = false;
    client.on('end', () => { clientEnded = true; if (!pumping && queue.length === 0) upstream.end(); });
    // Toward the standby: forward at `rate`, pausing the client between slices.
    const queue: Buffer[] = [];
    let pumping = false;
    const pump = async () => {
      if (pumping) return;
      pumping = true;
      while (queue.length > 0 && !upstream.destroyed) {
        let chunk = queue.shift()!;
        if (this.rate > 0) {
          const slice = Math.max(1024, Math.floor(this.rate / 50)); // 20 ms worth
          if (chunk.length > slice) { queue.unshift(chunk.subarray(slice)); chunk = chunk.subarray(0, slice); }
          await new Promise((r) => setTimeout(r, (chunk.length / this.rate) * 1000));
        }
        if (this.forwarded + chunk.length >= this.#cutAt) {
          const keep = Math.max(0, this.#cutAt - this.forwarded);
          upstream.write(chunk.subarray(0, keep));
          this.forwarded += keep;
          this.#cutAt = Infinity;
          setTimeout(() => this.cutAll(), 20);
          break;
        }
        this.forwarded += chunk.length;
        if (!upstream.write(chunk)) await new Promise((r) => upstream.once('drain', r));
      }
      pumping = false;
      if (queue.length === 0) {
        if (clientEnded) upstream.end();
        else client.resume();
      }
    };
    client.on('data', (d) => {
      queue.push(d);
      if (queue.length > 8) client.pause();
      void pump();
    });
  }

  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
