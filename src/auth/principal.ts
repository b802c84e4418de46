import type { KeyRole } from '../catalog/catalog.ts';

/** Who is calling, as established from the `authorization` metadata. */
export interface Principal {
  keyId: string;
  role: KeyRole;
  /** null for admin keys. */
  tenantId: string | null;
}
