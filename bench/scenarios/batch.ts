/**
 * batch: Batch of 10 INSERTs per call (one transaction each), 32 writers over
 * 4 tenants, `--sync full`, group commit on.
 */
import { BATCH, INSERT_EVENT, type Scenario } from './common.ts';
import { runWrites } from './insert.ts';

const STATEMENTS = 10;

export const batch: Scenario = {
  name: 'batch',
  description: `Batch of ${STATEMENTS} INSERTs per call, 32 writers over 4 tenants, --sync full`,
  async run(ctx) {
    ctx.addRow(
      await runWrites(ctx, {
        name: 'batch',
        server: { sync: 'full' },
        tenants: 4,
        writersPerTenant: 8,
        call: BATCH,
        data: { statements: Array.from({ length: STATEMENTS }, () => INSERT_EVENT) },
        rowsPerCall: STATEMENTS,
      }),
    );
  },
};
