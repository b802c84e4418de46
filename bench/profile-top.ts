/**
 * npx tsx bench/profile-top.ts <file.cpuprofile> [top=25]
 *
 * The top entries of a V8 CPU profile (what `bench:sql --profile` writes):
 * self time and inclusive time per function, as a share of the thread's
 * busy (not idle) samples. Frames of the bench's own profiler are left out.
 */
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

const [file, topArg] = process.argv.slice(2);
if (!file) throw new Error('usage: tsx bench/profile-top.ts <file.cpuprofile> [top]');
const top = Number(topArg ?? 25);
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const name = (n: Node) =>
  `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/.*node_modules\//, '').replace(/^file:\/\/.*?\/(src|workers|bench)\//, '$1/')}${n.callFrame.url ? `:${n.callFrame.lineNumber + 1}` : ''}`;
const isProfiler = (id: number) => {
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) if (byId.get(cur)!.callFrame.url.includes('profiler')) return true;
  return false;
};

const self = new Map<string, number>();
const inclusive = new Map<string, number>();
let busy = 0;
let total = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i]!;
  const dt = profile.timeDeltas[i] ?? 0;
  total += dt;
  const node = byId.get(id)!;
  if (node.callFrame.functionName === '(idle)' || isProfiler(id)) continue;
  busy += dt;
  self.set(name(node), (self.get(name(node)) ?? 0) + dt);
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const k = name(byId.get(cur)!);
    if (k.startsWith('(root)') || seen.has(k)) continue;
    seen.add(k);
    inclusive.set(k, (inclusive.get(k) ?? 0) + dt);
  }
}
const pct = (t: number) => `${((t / busy) * 100).toFixed(1).padStart(5)} %`;
process.stdout.write(`${file}: ${(total / 1000).toFixed(0)} ms sampled, ${(busy / 1000).toFixed(0)} ms busy\n-- self\n`);
for (const [k, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`${pct(t)}  ${k}\n`);
process.stdout.write('-- inclusive\n');
for (const [k, t] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`${pct(t)}  ${k}\n`);
