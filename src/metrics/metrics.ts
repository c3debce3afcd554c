// Prometheus metrics (prom-client), one registry per agent so that several agents in one
// process (tests, a library user's HA tool) do not mix their figures. Names follow
// Prometheus conventions: base units (seconds, bytes), `_total` for counters.
import { createServer, type Server } from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export type Role = 'primary' | 'standby' | 'promoted';

export class ReplicationMetrics {
  readonly registry = new Registry();
  readonly pause: Histogram;
  readonly dirtyPages: Counter;
  readonly sentBytes: Counter;
  readonly receivedBytes: Counter;
  readonly lag: Gauge;
  readonly committedEpoch: Gauge;
  readonly role: Gauge;
  readonly epochs: Counter;

  constructor(role: Role, options: { defaults?: boolean } = {}) {
    const registers = [this.registry];
    this.pause = new Histogram({
      name: 'replicate_epoch_pause_seconds', help: 'Time the target was frozen per epoch',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers,
    });
    this.dirtyPages = new Counter({ name: 'replicate_dirty_pages_total', help: 'Pages captured as written (4 KiB each)', registers });
    this.sentBytes = new Counter({ name: 'replicate_sent_bytes_total', help: 'Page data bytes sent to the standby, encoded', registers });
    this.receivedBytes = new Counter({ name: 'replicate_received_bytes_total', help: 'Page data bytes received from the primary, encoded', registers });
    this.lag = new Gauge({ name: 'replicate_lag_seconds', help: 'Age of the oldest captured epoch the standby has not committed', registers });
    this.committedEpoch = new Gauge({ name: 'replicate_committed_epoch', help: 'Newest epoch the standby has durably committed', registers });
    this.epochs = new Counter({ name: 'replicate_epochs_total', help: 'Epochs captured (primary) or committed (standby)', registers });
    this.role = new Gauge({ name: 'replicate_role', help: 'This agent\'s role: 1 for the label that applies', labelNames: ['role'], registers });
    this.setRole(role);
    if (options.defaults !== false) collectDefaultMetrics({ register: this.registry });
  }

  setRole(role: Role): void {
    for (const r of ['primary', 'standby', 'promoted'] as const) this.role.set({ role: r }, r === role ? 1 : 0);
  }
}

/** Serves `registry` at http://host:port/metrics. */
export async function serveMetrics(registry: Registry, host: string, port: number): Promise<Server & { url: string }> {
  const server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end('not found: metrics are at /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (e: Error) => res.writeHead(500).end(`${e.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address();
  const url = typeof addr === 'object' && addr ? `http://${host.includes(':') ? `[${host}]` : host}:${addr.port}/metrics` : '';
  return Object.assign(server, { url });
}
