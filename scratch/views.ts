import Database from 'better-sqlite3';
import { Guard } from '../workers/guard.ts';
const db = new Database(':memory:');
Guard.load(db);
const g = Guard.attach(db);
db.exec('CREATE VIEW v0(x) AS SELECT 1');
for (let i = 1; i <= 14; i++) db.exec(`CREATE VIEW v${i}(x) AS SELECT x FROM v${i - 1} UNION ALL SELECT x FROM v${i - 1}`);
let calls = 0;
for (const d of [10, 12, 14]) {
  g.arm(500);
  const t = Date.now();
  try { db.prepare(`SELECT count(*) FROM v${d}`).get(); console.log(d, 'ok', Date.now() - t); }
  catch (e) { console.log(d, 'err', (e as Error).message, Date.now() - t, 'ms'); }
  finally { console.log(' fired', g.disarm()); }
}
