#!/usr/bin/env python3
"""pulsar-lite alone, without Prism: concurrent readers that stall.

Starts a pulsar-lite broker in a temp dir, publishes MESSAGES messages to
one topic, then runs READERS readers from the earliest message at once,
each asking for PERMITS messages at a time (the receiver queue), all on one
client connection ("shared") or each on its own ("own"), with the official
client (`pulsar-client`, which `pip install pulsar-lite` brings). A reader
that gets nothing for 10 s has stalled. Exits 1 when one did.

    scripts/pulsar-lite-stall.py [READERS] [MESSAGES] [PERMITS] [shared|own]

What it shows (pulsar-lite 0.2, docs/benchmarks.md, "Pulsar reads"): on one
connection, readers stall once READERS x PERMITS passes the broker's
outbound queue of 8 192 messages per connection (32 x 250 never, 32 x 500
and 16 x 1 000 do); a connection per reader never stalls. Either way
readers are sent messages again (counted as "again").
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pulsar
import pulsar_lite


def main():
    readers = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    permits = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    connections = sys.argv[4] if len(sys.argv) > 4 else "shared"
    binary = os.path.join(os.path.dirname(pulsar_lite.__file__), "bin", "pulsar-lite")
    work = tempfile.mkdtemp(prefix="pulsar-lite-stall-")
    with open(os.path.join(work, "broker.toml"), "w") as config:
        config.write("[metrics]\nenabled = false\n")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    log = open(os.path.join(work, "broker.log"), "w")
    broker = subprocess.Popen(
        [binary, "--config", os.path.join(work, "broker.toml"), "--addr", f"127.0.0.1:{port}",
         "--db-path", os.path.join(work, "db"), "--log-level", os.environ.get("LOG_LEVEL", "warn")],
        stdout=log, stderr=log, cwd=work)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"pulsar://127.0.0.1:{port}"
        topic = "persistent://public/default/stall"
        client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(messages - 1):
            producer.send(b"x" * 100 + str(i).encode())
        last = producer.send(b"last")
        received = [0] * readers
        distinct = [set() for _ in range(readers)]
        stalled = []

        def read(k):
            own = connections == "own"
            c = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error)) if own else client
            reader = c.create_reader(topic, pulsar.MessageId.earliest, receiver_queue_size=permits)
            while True:
                try:
                    m = reader.read_next(timeout_millis=10_000)
                except Exception:
                    stalled.append((k, len(distinct[k])))
                    return
                received[k] += 1
                distinct[k].add((m.message_id().ledger_id(), m.message_id().entry_id()))
                if m.message_id() == last:
                    reader.close()
                    return

        started = time.time()
        threads = [threading.Thread(target=read, args=(k,)) for k in range(readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        again = sum(received) - sum(len(d) for d in distinct)
        print(f"{readers} readers x {permits} permits, {connections} connection(s), {messages} messages: "
              f"{readers - len(stalled)} read to the end in {time.time() - started:.1f} s, "
              f"{len(stalled)} stalled {sorted(stalled)} (reader, messages it had); "
              f"{again} of {sum(received)} deliveries were again")
        return 1 if stalled else 0
    finally:
        broker.kill()
        broker.wait()
        if not os.environ.get("KEEP"):
            subprocess.run(["rm", "-rf", work])
        else:
            print("broker log:", os.path.join(work, "broker.log"))


if __name__ == "__main__":
    sys.exit(main())
