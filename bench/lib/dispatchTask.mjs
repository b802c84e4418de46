// The trivial task both dispatch variants run (bench/dispatch.ts): a Map
// lookup and a small object back. Plain JavaScript because worker threads do
// not inherit tsx's loader on Node 20.
const tenants = new Map();
for (let i = 0; i < 1000; i++) {
  tenants.set(`bench${String(i).padStart(5, '0')}`, { slot: i, plan: 'bench', readOnly: false });
}

export default function task(request) {
  const tenant = tenants.get(request.tenantId);
  return { id: request.id, ok: tenant !== undefined, slot: tenant ? tenant.slot : -1, rows: 1 };
}
