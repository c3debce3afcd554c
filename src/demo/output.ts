// The demo's output: short human lines (colours on a terminal only) or, with --json, one
// JSON event a line.

const CODES = { bold: 1, dim: 2, red: 31, green: 32, yellow: 33, blue: 34, cyan: 36 } as const;
export type Style = keyof typeof CODES;

export class DemoOutput {
  readonly json: boolean;
  readonly color: boolean;
  readonly #t0 = performance.now();

  constructor(json: boolean) {
    this.json = json;
    this.color = !json && !!process.stdout.isTTY && !process.env.NO_COLOR && process.env.TERM !== 'dumb';
  }

  /** Milliseconds since the demo started. */
  get elapsedMs(): number { return performance.now() - this.#t0; }

  paint(style: Style | Style[], text: string): string {
    if (!this.color) return text;
    const codes = (Array.isArray(style) ? style : [style]).map((s) => CODES[s]).join(';');
    return `\x1b[${codes}m${text}\x1b[0m`;
  }

  ok(text: string): string { return `${this.paint('green', '✓')} ${text}`; }
  bad(text: string): string { return `${this.paint('red', '✗')} ${text}`; }
  note(text: string): string { return `${this.paint('dim', '·')} ${text}`; }
  kill(text: string): string { return `${this.paint(['red', 'bold'], '☠')} ${text}`; }

  /** An event: a JSON line with --json, else `human` (nothing when it is undefined). */
  event(type: string, data: object, human?: string): void {
    if (this.json) {
      const line = JSON.stringify({ event: type, time: new Date().toISOString(), ms: Math.round(this.elapsedMs), ...data }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
      process.stdout.write(`${line}\n`);
    } else if (human !== undefined) {
      process.stdout.write(`${human}\n`);
    }
  }

  /** Human output only. */
  say(text = ''): void {
    if (!this.json) process.stdout.write(`${text}\n`);
  }

  heading(text: string): void {
    this.say();
    this.say(this.paint('bold', text));
  }
}
