/**
 * The etcd client every cluster part uses. etcd3's default fault handling
 * opens a circuit breaker for 5 s after three failures, so a restarted etcd
 * would stay unreachable for seconds after it is back; a node's lease has
 * less slack than that. Here the breaker half-opens after 500 ms and calls
 * are retried three times with a short backoff.
 */
import { ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, retry } from 'cockatiel';
import { Etcd3, isRecoverableError } from 'etcd3';

export function etcdClient(hosts: string[]): Etcd3 {
  return new Etcd3({
    hosts,
    dialTimeout: 3000,
    faultHandling: {
      host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 500, breaker: new ConsecutiveBreaker(3) }),
      global: retry(handleWhen(isRecoverableError), { maxAttempts: 3, backoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 500 }) }),
    },
  });
}
