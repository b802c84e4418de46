/** A refused admission as the contract's RESOURCE_EXHAUSTED error. */
import { status as Status } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import type { Refusal } from './admission.ts';

export function quotaExceeded(tenantId: string, refusal: Refusal): TenantdError {
  const retry = refusal.retryAfterMs === null ? '' : `; retry in ${refusal.retryAfterMs} ms`;
  return new TenantdError(
    Status.RESOURCE_EXHAUSTED,
    'QUOTA_EXCEEDED',
    `tenants/${tenantId} is over its ${refusal.quota} quota: ${refusal.current} of ${refusal.limit}${retry}`,
    {
      metadata: { quota: refusal.quota, current: String(refusal.current), limit: String(refusal.limit), tenant: tenantId },
      quotaViolations: [{ quota: refusal.quota, current: refusal.current, limit: refusal.limit, subject: `tenants/${tenantId}` }],
      ...(refusal.retryAfterMs === null ? {} : { retryDelayMs: refusal.retryAfterMs }),
    },
  );
}
