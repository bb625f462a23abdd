#!/usr/bin/env python3
"""Prism from Python with nothing but grpcio and stubs generated from proto/.

One address serves every namespace: any gateway forwards a call for a
namespace of another shard to its owner, so a plain gRPC client pointed at
one gateway, or at a load balancer in front of all of them, needs no
routing of its own.

    pip install -r examples/python/requirements.txt
    examples/python/generate.sh
    python3 examples/python/example.py --target 127.0.0.1:7401 \\
        --kv acme/profiles --ts acme/plays        # PRISM_TOKEN=... for auth

For each KeyValue namespace it writes a record and reads it back; for each
TimeSeries namespace it opens a tail, writes events, reads them back, and
checks the tail delivered them. It exits 0 when everything matched, 1 when
something did not (saying what), 2 on bad usage.
"""

import argparse
import os
import queue
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("PRISM_STUBS", os.path.join(HERE, "gen")))

import grpc  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402

try:
    from prism.kv.v1 import kv_pb2, kv_pb2_grpc  # noqa: E402
    from prism.timeseries.v1 import timeseries_pb2 as ts_pb2  # noqa: E402
    from prism.timeseries.v1 import timeseries_pb2_grpc as ts_pb2_grpc  # noqa: E402
except ImportError as e:
    sys.exit(f"stubs not found ({e}): run examples/python/generate.sh first, or set PRISM_STUBS")


class Mismatch(Exception):
    pass


def check(ok, what):
    if not ok:
        raise Mismatch(what)


def now():
    t = Timestamp()
    t.GetCurrentTime()
    return t


def key_value(channel, metadata, namespace, timeout):
    kv = kv_pb2_grpc.KeyValueServiceStub(channel)
    record = f"py-{uuid.uuid4().hex[:8]}"
    value = f"hello from python to {namespace}".encode()
    kv.PutItems(
        kv_pb2.PutItemsRequest(
            namespace=namespace,
            id=record,
            items=[kv_pb2.Item(key=b"greeting", value=value)],
            # The same token on a retry makes the write apply once.
            idempotency_token=kv_pb2.IdempotencyToken(generation_time=now(), token=uuid.uuid4().hex),
        ),
        metadata=metadata,
        timeout=timeout,
    )
    got = kv.GetItems(kv_pb2.GetItemsRequest(namespace=namespace, id=record), metadata=metadata, timeout=timeout)
    values = [item.value for item in got.items]
    check(values == [value], f"{namespace}/{record}: read {values!r}, wrote {value!r}")
    print(f"kv  {namespace}: wrote and read back record {record}")


def time_series(channel, metadata, namespace, timeout, events=3):
    ts = ts_pb2_grpc.TimeSeriesServiceStub(channel)
    series = f"py-{uuid.uuid4().hex[:8]}"
    # A tail first: every acknowledged write from now on reaches it.
    tail = ts.TailEventRecords(
        ts_pb2.TailEventRecordsRequest(namespace=namespace, time_series_id=series), metadata=metadata
    )
    tail.initial_metadata()  # the subscription exists once the headers are back
    delivered = queue.Queue()

    def drain():
        try:
            for message in tail:
                for event in message.events:
                    delivered.put(event.event_id)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                delivered.put(e)

    threading.Thread(target=drain, daemon=True).start()
    ids = [f"e{i}" for i in range(events)]
    for event_id in ids:
        event = ts_pb2.Event(
            time_series_id=series,
            event_time=now(),
            event_id=event_id,
            items=[ts_pb2.EventItem(key=b"v", value=event_id.encode())],
            tags={"source": "python"},
        )
        written = ts.WriteEventRecordsSync(
            ts_pb2.WriteEventRecordsRequest(namespace=namespace, events=[event]), metadata=metadata, timeout=timeout
        )
        check(written.accepted == 1, f"{namespace}: {written.accepted} events accepted, sent 1")
    read = ts.ReadEventRecords(
        ts_pb2.ReadEventRecordsRequest(namespace=namespace, time_series_id=series), metadata=metadata, timeout=timeout
    )
    check(
        sorted(e.event_id for e in read.events) == ids,
        f"{namespace}: read {[e.event_id for e in read.events]}, wrote {ids}",
    )
    seen = []
    deadline = time.monotonic() + timeout
    while len(seen) < events:
        try:
            got = delivered.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise Mismatch(f"{namespace}: the tail delivered {seen} of {ids}") from None
        if isinstance(got, Exception):
            raise got
        seen.append(got)
    tail.cancel()
    check(seen == ids, f"{namespace}: the tail delivered {seen}, in that order; wrote {ids}")
    print(f"ts  {namespace}: wrote {events} events, read them back, and the tail delivered them in order")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=os.environ.get("PRISM_GATEWAY", "127.0.0.1:7401"),
                        help="host:port of any gateway, or of a load balancer in front of them")
    parser.add_argument("--token", default=os.environ.get("PRISM_TOKEN"), help="bearer token (default $PRISM_TOKEN)")
    parser.add_argument("--ca-file", help="PEM CA bundle: connect with TLS, verifying the gateway against it")
    parser.add_argument("--kv", action="append", default=[], metavar="NAMESPACE", help="a KeyValue namespace")
    parser.add_argument("--ts", action="append", default=[], metavar="NAMESPACE", help="a TimeSeries namespace")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds each call may take")
    args = parser.parse_args()
    if not args.kv and not args.ts:
        parser.error("name at least one namespace with --kv or --ts")

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    if args.ca_file:
        with open(args.ca_file, "rb") as f:
            channel = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(root_certificates=f.read()))
    else:
        channel = grpc.insecure_channel(args.target)
    try:
        with channel:
            for namespace in args.kv:
                key_value(channel, metadata, namespace, args.timeout)
            for namespace in args.ts:
                time_series(channel, metadata, namespace, args.timeout)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except Mismatch as e:
        print(f"mismatch: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
