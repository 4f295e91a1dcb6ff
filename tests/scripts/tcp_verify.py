#!/usr/bin/python3
"""A TCP transfer whose bytes are checked: `server PORT` receives one connection and prints
"<bytes> <sha256>"; `client HOST PORT BYTES [RATE]` sends BYTES deterministic bytes (at most RATE
bytes per second if given, so a transfer can span a whole test) and prints the same.
Used by the overlay tests to prove that what arrives is exactly what left."""
import hashlib
import socket
import sys
import time


def stream(n):
    block, counter = b"", 0
    while n > 0:
        block = hashlib.sha256(counter.to_bytes(8, "big")).digest() * 512  # 16 KiB
        counter += 1
        chunk = block[:n]
        n -= len(chunk)
        yield chunk


def main():
    role = sys.argv[1]
    digest, total = hashlib.sha256(), 0
    if role == "server":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", int(sys.argv[2])))
        srv.listen(1)
        srv.settimeout(60)
        print("listening", flush=True)
        conn, _ = srv.accept()
        conn.settimeout(60)
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            digest.update(data)
            total += len(data)
    else:
        host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        rate = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        conn = socket.create_connection((host, port), timeout=30)
        start = time.monotonic()
        for chunk in stream(n):
            if rate:
                ahead = total / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            conn.sendall(chunk)
            digest.update(chunk)
            total += len(chunk)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)
    conn.close()
    print(total, digest.hexdigest(), flush=True)


if __name__ == "__main__":
    main()
