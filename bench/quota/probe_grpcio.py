#!/usr/bin/python3
"""The latency probe of bench/scale.ts with gRPC's C core (Debian's python3-grpcio).

The grpc-js probe (probe.ts) stops for its own scavenges: a Node client
promotes ~3 MB per scavenge here and each one takes 5-13 ms on two busy
cores, so a few of its calls measure the client. This one is a different
client stack altogether, as ghz would be: the transport runs in C, Python
frees by reference counting, and its cycle collector is off while it times.

It only moves bytes: the parent serializes each ExecuteRequest and decodes
each ExecuteResponse with tenantd's own proto definitions, so no stubs are
generated here and nothing about the messages is duplicated.

Protocol: one JSON object per line on stdin,
  {"type": "run", "address": "127.0.0.1:port", "method": "/tenantd.v1.SqlService/Execute",
   "calls": [{"key": "...", "request": "<base64>"}, ...]}
answered by one line on stdout,
  {"type": "result", "latencies": [ms, ...], "responses": ["<base64>", ...]}
or {"type": "error", "message": "..."} at the first failed call;
{"type": "stop"} or end of input ends the process.
"""

import base64
import gc
import json
import sys
import time

try:
    import grpc
except ImportError as error:  # the parent checks first; this is for a run by hand
    sys.stdout.write(json.dumps({'type': 'error', 'message': 'python3-grpcio is not installed: %s' % error}) + '\n')
    sys.exit(2)

DEADLINE_S = 30.0


def run(channels, message):
    channel = channels.get(message['address'])
    if channel is None:
        channel = channels[message['address']] = grpc.insecure_channel(message['address'])
    # Raw bytes both ways: no serializer, no deserializer.
    call = channel.unary_unary(message['method'])
    calls = [((('authorization', 'Bearer ' + c['key']),), base64.b64decode(c['request'])) for c in message['calls']]
    latencies = []
    responses = []
    gc.collect()
    gc.disable()
    try:
        for metadata, request in calls:
            t0 = time.perf_counter_ns()
            try:
                response = call(request, metadata=metadata, timeout=DEADLINE_S)
            except grpc.RpcError as error:
                return {'type': 'error', 'message': 'call %d: %s %s' % (len(latencies), error.code().name, error.details())}
            latencies.append((time.perf_counter_ns() - t0) / 1e6)
            responses.append(response)
    finally:
        gc.enable()
    return {'type': 'result', 'latencies': latencies, 'responses': [base64.b64encode(r).decode('ascii') for r in responses]}


def main():
    channels = {}
    try:
        for line in sys.stdin:
            message = json.loads(line)
            if message['type'] == 'stop':
                break
            try:
                answer = run(channels, message)
            except Exception as error:  # anything else: tell the parent, keep serving
                answer = {'type': 'error', 'message': '%s: %s' % (type(error).__name__, error)}
            sys.stdout.write(json.dumps(answer) + '\n')
            sys.stdout.flush()
    finally:
        for channel in channels.values():
            channel.close()


if __name__ == '__main__':
    main()
