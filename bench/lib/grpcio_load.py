#!/usr/bin/python3
"""A closed-loop load generator on gRPC's C core (Debian's python3-grpcio), for bench:cores.

A grpc-js client costs a Node event loop 200-650 µs per call on this host: on two cores it takes
most of one core and leaves the server little to show. The C core does the transport in C
threads; Python only starts each call and takes its answer (a future's callback), so a call
costs the client a fraction of that.

It moves bytes only: the parent gives serialized ExecuteRequests and the keys, so nothing about
the messages is duplicated here.

Input: one JSON object on stdin,
  {"targets": [{"address": "127.0.0.1:port", "calls": [{"tenant": "...", "key": "...", "request": "<base64>"}, ...]}, ...],
   "method": "/tenantd.v1.SqlService/Execute", "concurrency": 64, "warmup_s": 1.0, "duration_s": 5.0}
Each call picks the next target round-robin and the next of that target's calls (a tenant's key
goes only to the target that holds the tenant, as the proxy would route it); every call carries
x-tenant-id, which the cluster's proxy routes on.
Output: one JSON line,
  {"calls": N, "errors": {"CODE": n}, "seconds": s, "client_cpu_s": s,
   "latency_ms": {"p50": ..., "p99": ...}}
counting only calls that ended inside the measured window.
"""

import base64
import json
import resource
import sys
import threading
import time

import grpc


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    spec = json.loads(sys.stdin.read())
    method = spec['method']
    concurrency = int(spec['concurrency'])
    targets = []
    for target in spec['targets']:
        channel = grpc.insecure_channel(target['address'], options=[('grpc.so_reuseport', 0)])
        call = channel.unary_unary(method)  # raw bytes: no serializer either way
        calls = [((('authorization', 'Bearer ' + c['key']), ('x-tenant-id', c['tenant'])), base64.b64decode(c['request'])) for c in target['calls']]
        targets.append({'call': call, 'calls': calls, 'next': 0})

    # Reentrant: a future that is already done runs its callback at once, in the thread adding it.
    lock = threading.RLock()
    state = {'target': 0, 'measuring': False, 'stopping': False, 'in_flight': 0}
    latencies = []
    errors = {}
    done = threading.Event()

    def start_one():
        # Under the lock: pick the target and its next request.
        target = targets[state['target'] % len(targets)]
        state['target'] += 1
        metadata, request = target['calls'][target['next'] % len(target['calls'])]
        target['next'] += 1
        state['in_flight'] += 1
        started = time.perf_counter()
        future = target['call'].future(request, metadata=metadata, timeout=30.0)
        future.add_done_callback(lambda f, started=started: finished(f, started))

    def finished(future, started):
        ended = time.perf_counter()
        code = future.code()
        with lock:
            state['in_flight'] -= 1
            if state['measuring']:
                if code == grpc.StatusCode.OK:
                    latencies.append(ended - started)
                else:
                    errors[code.name] = errors.get(code.name, 0) + 1
            if not state['stopping']:
                start_one()
            elif state['in_flight'] == 0:
                done.set()

    with lock:
        for _ in range(concurrency):
            start_one()
    time.sleep(float(spec.get('warmup_s', 1.0)))
    with lock:
        state['measuring'] = True
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
    time.sleep(float(spec['duration_s']))
    with lock:
        state['measuring'] = False
        state['stopping'] = True
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        counted = sorted(latencies)
    done.wait(60)

    def pct(p):
        if not counted:
            return None
        return counted[min(len(counted) - 1, int(len(counted) * p / 100))] * 1000

    out = {
        'calls': len(counted),
        'errors': errors,
        'seconds': seconds,
        'client_cpu_s': cpu,
        'latency_ms': {'p50': pct(50), 'p99': pct(99)},
    }
    sys.stdout.write(json.dumps(out) + '\n')


if __name__ == '__main__':
    main()
