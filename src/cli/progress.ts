/**
 * A progress line on stderr when it is a terminal, redrawn at most ten times
 * a second; nothing at all otherwise, so piped output stays clean.
 */

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function bytes(n: number): string {
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${UNITS[i]}`;
}

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

function bar(fraction: number, width = 24): string {
  const filled = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
}

/** The text of one progress line; `unit` bytes shows sizes, a rate and an ETA. */
export function progressLine(label: string, done: number, total: number | null, elapsedMs: number, unit: 'bytes' | 'tenants'): string {
  const fraction = total ? done / total : 0;
  const rate = elapsedMs > 0 ? (done * 1000) / elapsedMs : 0;
  if (unit === 'tenants') {
    return `${label} ${total ? `${bar(fraction)} ` : ''}${done}${total ? ` of ${total}` : ''} tenants`;
  }
  const eta = total && rate > 0 ? duration((total - done) / rate) : '?';
  return `${label} ${total ? `${bar(fraction)} ${Math.floor(fraction * 100)}% ` : ''}${bytes(done)}${total ? ` of ${bytes(total)}` : ''}  ${bytes(rate)}/s  ETA ${eta}`;
}

export class Progress {
  private readonly started = Date.now();
  private lastDraw = 0;
  private readonly on: boolean;

  constructor(
    private readonly label: string,
    private readonly unit: 'bytes' | 'tenants',
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.on = stream.isTTY === true;
  }

  update(done: number, total: number | null, force = false): void {
    if (!this.on) return;
    const now = Date.now();
    if (!force && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    this.stream.write(`\r\x1b[2K${progressLine(this.label, done, total, now - this.started, this.unit)}`);
  }

  /** Leaves the last line on screen and moves below it. */
  done(): void {
    if (this.on && this.lastDraw !== 0) this.stream.write('\n');
  }
}
