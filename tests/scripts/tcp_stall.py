#!/usr/bin/python3
"""A TCP stream that measures stalls: `server PORT` receives one connection and prints
"<bytes> <longest gap between two reads, seconds>"; `client HOST PORT SECONDS` sends as fast as
it can for SECONDS and prints the bytes sent. Used by the path MTU tests to show that a path
MTU that changes mid-transfer never stops the stream for long."""
import socket
import sys
import time


def main():
    role = sys.argv[1]
    if role == "server":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", int(sys.argv[2])))
        srv.listen(1)
        srv.settimeout(60)
        print("listening", flush=True)
        conn, _ = srv.accept()
        conn.settimeout(60)
        total, gap, last = 0, 0.0, time.monotonic()
        while True:
            data = conn.recv(1 << 16)
            now = time.monotonic()
            if not data:
                break
            gap = max(gap, now - last)
            last = now
            total += len(data)
        conn.close()
        print(total, f"{gap:.3f}", flush=True)
    else:
        host, port, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        conn = socket.create_connection((host, port), timeout=30)
        block, total = b"x" * (1 << 16), 0
        end = time.monotonic() + secs
        while time.monotonic() < end:
            conn.sendall(block)
            total += len(block)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)
        conn.close()
        print(total, flush=True)


if __name__ == "__main__":
    main()
