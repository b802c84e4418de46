/** The optional `request_id` of idempotent writes (docs/transactions.md): empty, or a UUID. */
import { invalidArgument } from '../errors.ts';

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** The id in lower case, or null when the request has none. */
export function checkRequestId(value: string | undefined, field = 'request_id'): string | null {
  if (value === undefined || value === '') return null;
  if (!UUID.test(value)) throw invalidArgument(field, 'a UUID, e.g. 4b0a3c1e-2f6d-4e8a-9c1b-7d5e3f2a1b0c', 'INVALID_REQUEST_ID');
  return value.toLowerCase();
}
