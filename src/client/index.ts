/**
 * `tenantd/client`: the typed client for tenantd.
 *
 *     const db = connect({ address: '127.0.0.1:7070', key: process.env.TENANTD_KEY });
 *     const { rows } = await db.execute('SELECT ? + 1', [41n]);
 */
export { connect, TenantdClient, type ConnectOptions, type QueryOptions, type RowStream, type Statement } from './client.ts';
export { Channel, ServerStream, type CallOptions, type ChannelOptions, type TlsOptions } from './channel.ts';
export { TenantdError, fromServiceError, type FieldViolation, type QuotaViolation } from './errors.ts';
export { Events, type Event, type NewEvent, type ReadOptions, type SubscribeOptions } from './events.ts';
export { Admin, type MaintenanceOperation, type Message, type TenantSpec } from './admin.ts';
export type { Column, ResultSet, Row } from './results.ts';
export { TransactionError, type TransactionOptions, type Tx } from './transaction.ts';
export { fromWire, toWire, type Params, type SqlInput, type SqlValue, type WireValue } from './values.ts';
