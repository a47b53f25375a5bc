#!/usr/bin/env python3
"""Instructions per proxied call of the gateway, counted by callgrind.

Starts a worker, then the gateway under `valgrind --tool=callgrind` with one serving thread,
sends WARMUP `ServerLive` calls from CLIENTS threads (Python's grpcio: the bench's own client
cannot run under valgrind), zeroes the counters, sends CALLS more, dumps the counters and prints
the instructions per call. Wall-clock noise does not enter: this is the measure for differences
of a few percent (reports/bench/overhead.md).

    bench/callgrind_gateway.py BINARY [GATEWAY FLAG...]
    bench/callgrind_gateway.py target/release/switchyard --rpc-metrics
"""
import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc

WARMUP, CALLS, CLIENTS = 400, 4000, 4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def calls(port, n):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    live = channel.unary_unary(
        "/inference.GRPCInferenceService/ServerLive",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    per_thread = n // CLIENTS

    def run():
        for _ in range(per_thread):
            live(b"", timeout=30)

    threads = [threading.Thread(target=run) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()


def main():
    binary, flags = sys.argv[1], sys.argv[2:]
    out = tempfile.mkdtemp(prefix="callgrind-gateway-")
    worker_port, gateway_port, admin_port = free_port(), free_port(), free_port()
    worker = subprocess.Popen(
        [binary, "worker", "--listen", f"127.0.0.1:{worker_port}", "--speed", "1000"],
        stderr=subprocess.DEVNULL,
    )
    gateway = None
    try:
        wait_port(worker_port)
        gateway = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out.%p",
             binary, "gateway", *flags, "--threads", "1", "--listen", f"127.0.0.1:{gateway_port}",
             "--admin", f"127.0.0.1:{admin_port}", "--backend", f"http://127.0.0.1:{worker_port}"],
            stderr=subprocess.DEVNULL,
        )
        wait_port(gateway_port)
        calls(gateway_port, WARMUP)
        subprocess.run(["callgrind_control", "--zero", str(gateway.pid)], check=True, capture_output=True)
        calls(gateway_port, CALLS)
        subprocess.run(["callgrind_control", "--dump", str(gateway.pid)], check=True, capture_output=True)
        dumps = sorted(glob.glob(f"{out}/callgrind.out.{gateway.pid}.*"), key=os.path.getmtime)
        total = None
        with open(dumps[-1]) as f:
            for line in f:
                m = re.match(r"(?:summary|totals):\s+(\d+)", line)
                if m:
                    total = int(m.group(1))
        if total is None:
            raise SystemExit(f"no totals in {dumps[-1]}")
        print(f"{total / CALLS:.0f} instructions per call ({total} over {CALLS} calls; flags: {' '.join(flags) or 'none'})")
    finally:
        for p in (gateway, worker):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
