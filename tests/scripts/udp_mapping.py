#!/usr/bin/python3
"""Observing NAT mappings with real datagrams.

`observe SECONDS N PORT...` binds 0.0.0.0:PORT for each PORT, prints "ready", then prints
"<payload> <source ip>:<source port>" for each datagram until N distinct payloads arrived, or
half a second after a "done" datagram (`done PORT`, sent once the sender finished), or SECONDS
passed. `send LOCAL_PORT IP:PORT...` sends, from one socket bound to LOCAL_PORT, one
datagram to each destination, whose payload is the destination itself (so the observer can tell
which destination saw which source)."""
import selectors
import socket
import sys
import time


def observe(seconds, n, ports):
    sel = selectors.DefaultSelector()
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    seen, deadline = set(), time.monotonic() + seconds
    while len(seen) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in sel.select(left):
            data, (ip, port) = key.fileobj.recvfrom(2048)
            payload = data.decode(errors="replace")
            if payload == "done":
                deadline = min(deadline, time.monotonic() + 0.5)
            elif payload not in seen:
                seen.add(payload)
                print(f"{payload} {ip}:{port}", flush=True)


def send(local_port, dests):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", local_port))
    for d in dests:
        ip, port = d.rsplit(":", 1)
        s.sendto(d.encode(), (ip, int(port)))


def main():
    if sys.argv[1] == "observe":
        observe(float(sys.argv[2]), int(sys.argv[3]), [int(p) for p in sys.argv[4:]])
    elif sys.argv[1] == "send":
        send(int(sys.argv[2]), sys.argv[3:])
    elif sys.argv[1] == "done":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"done", ("127.0.0.1", int(sys.argv[2])))
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
