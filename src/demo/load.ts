// The demo's client: increments counters of the example service at a steady rate over
// one kept-alive connection (a new connection per request would open and close a socket
// in the service all the time, and each change of its descriptors costs a new base image).
import { Agent } from 'node:http';
import { httpJson } from './children.js';

export const KEYS = ['apples', 'pears', 'plums'] as const;

export interface ServiceState { pid: number; total: number; counters: Record<string, number>; recent: string[] }

export class LoadDriver {
  readonly url: string;
  readonly agent = new Agent({ keepAlive: true, maxSockets: 1 });
  /** Increments the service answered. */
  done = 0;
  /** The service's total in its last answer. */
  total = 0;
  readonly counters: Record<string, number> = {};
  lastError: Error | undefined;
  #running = false;
  #loop: Promise<void> = Promise.resolve();

  constructor(port: number) {
    this.url = `http://127.0.0.1:${port}`;
  }

  /** One increment; resolves with the service's answer. */
  async increment(): Promise<void> {
    const key = KEYS[Math.floor(Math.random() * KEYS.length)]!;
    // A generous timeout: the service is frozen while a base image is dumped.
    const r = await httpJson('POST', `${this.url}/incr?key=${key}`, { agent: this.agent, timeoutMs: 10_000 });
    this.done++;
    this.total = Number(r.total);
    this.counters[key] = Number(r.value);
  }

  state(): Promise<ServiceState> {
    return httpJson('GET', `${this.url}/state`, { agent: this.agent, timeoutMs: 10_000 }) as unknown as Promise<ServiceState>;
  }

  /** Increments `perSecond` times a second (one at a time) until `pause()`. */
  start(perSecond: number): void {
    if (this.#running) return;
    this.#running = true;
    const gap = 1000 / perSecond;
    this.#loop = (async () => {
      let next = performance.now();
      while (this.#running) {
        try {
          await this.increment();
        } catch (e) {
          this.lastError = e as Error;
          this.#running = false;
          return;
        }
        next += gap;
        const wait = next - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        else next = performance.now(); // behind (the service was frozen for a base image): no burst to catch up
      }
    })();
  }

  /** Stops after the increment in progress; resolves once its answer is in. */
  async pause(): Promise<void> {
    this.#running = false;
    await this.#loop;
  }

  close(): void {
    this.#running = false;
    this.agent.destroy();
  }
}
