"""Real-stack traffic for the labs: a TCP transfer with a SHA-256 of the
bytes on both sides, and a UDP echo.  Run inside a namespace:

  python -m netns_labs.xfer tcp-server PORT           # prints "<bytes> <sha256>" per connection
  python -m netns_labs.xfer tcp-client ADDR PORT NBYTES [CONNECT_S]  # prints "<bytes> <sha256>" sent
  python -m netns_labs.xfer tcp-phases ADDR PORT ACTIVE_S QUIET_S ACTIVE_S ...  # paced: 64 KiB per 10 ms
  python -m netns_labs.xfer tcp-hold ADDR PORT N SEGMENTS  # N connections; stdin "i": SEGMENTS on the i-th
  python -m netns_labs.xfer tcp-trickle ADDR PORT SPORT SECONDS  # 100 bytes every 0.2 s, from port SPORT
  python -m netns_labs.xfer udp-echo PORT
  python -m netns_labs.xfer udp-client ADDR PORT COUNT    # prints "<echoed> <count>"
  python -m netns_labs.xfer udp-send ADDR PORT SPORT COUNT  # one flow, fire and forget
  python -m netns_labs.xfer udp-stream ADDR PORT SPORT SECONDS GAP_S  # one way, paced; "<count> <sha256>" sent
  python -m netns_labs.xfer udp-sink PORT IDLE_S [FIRST_S]  # "<count> <sha256>" received, once idle for IDLE_S
                                                  # (FIRST_S, default IDLE_S, before the first datagram)
  python -m netns_labs.xfer raw-send IFACE FRAMEHEX[,FRAMEHEX...] COUNT [GAP_S]  # exact frames (e.g. spoofed)
  python -m netns_labs.xfer raw-capture IFACE MARKHEX COUNT [SECONDS]  # received frames holding MARK, hex
  python -m netns_labs.xfer raw-capture IFACE,IFACE... MARKHEX COUNT [SECONDS]  # "<iface> <hex>", COUNT in all
  python -m netns_labs.xfer promisc-capture IFACE MARKHEX COUNT [SECONDS]  # as raw-capture, in promiscuous
                                                  # mode (tcpdump's default)
Every socket has a timeout, so nothing here can hang a test.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import select
import socket
import struct
import sys
import time

CHUNK = 1 << 16


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_server(port: int, connections: int = 1) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::", port))
        srv.listen()
        srv.settimeout(60)
        print("ready", flush=True)
        for _ in range(connections):
            conn, _ = srv.accept()
            conn.settimeout(60)
            h, n = hashlib.sha256(), 0
            with conn:
                while data := conn.recv(CHUNK):
                    h.update(data)
                    n += len(data)
                conn.sendall(h.hexdigest().encode())
            print(n, h.hexdigest(), flush=True)


def tcp_client(addr: str, port: int, nbytes: int, connect_s: float = 60) -> None:
    """connect_s: how long to try connecting (a path expected to drop fails fast)."""
    h, sent = hashlib.sha256(), 0
    with socket.create_connection((addr, port), timeout=connect_s) as s:
        s.settimeout(60)
        while sent < nbytes:
            data = os.urandom(min(CHUNK, nbytes - sent))
            s.sendall(data)
            h.update(data)
            sent += len(data)
        s.shutdown(socket.SHUT_WR)
        peer = s.recv(64).decode()
    print(sent, h.hexdigest(), peer, flush=True)


def tcp_paced(addr: str, port: int, phases: list[float], chunk: int = CHUNK, every: float = 0.01,
              sport: int = 0) -> None:
    """One connection (from port sport, if given) that alternates sending
    (chunk bytes every `every` s) and silence, phase by phase, starting with
    sending; prints like tcp-client."""
    h, sent = hashlib.sha256(), 0
    with socket.create_connection((addr, port), timeout=60, source_address=("", sport) if sport else None) as s:
        for k, seconds in enumerate(phases):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if k % 2 == 0:
                    data = os.urandom(chunk)
                    s.sendall(data)
                    h.update(data)
                    sent += len(data)
                time.sleep(every)
        s.shutdown(socket.SHUT_WR)
        peer = s.recv(64).decode()
    print(sent, h.hexdigest(), peer, flush=True)


def tcp_hold(addr: str, port: int, connections: int, segments: int) -> None:
    """Open connections and keep them (each socket keeps its own tx hash, which
    the kernel's multipath choice may use); for each stdin line "i", send
    SEGMENTS small segments on the i-th, each acknowledged before the next
    (so none are merged), then print "sent i".  Stdin closed: all end."""
    socks = [socket.create_connection((addr, port), timeout=30) for _ in range(connections)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print("ready", flush=True)
    for line in sys.stdin:
        i = int(line)
        for _ in range(segments):
            socks[i].sendall(b"x" * 100)
            end = time.monotonic() + 10
            while _unacked(socks[i]):
                if time.monotonic() > end:
                    raise TimeoutError(f"connection {i}: segment not acknowledged")
                time.sleep(0.001)
        print("sent", i, flush=True)
    for s in socks:
        s.close()


def _unacked(s: socket.socket) -> int:
    """Bytes sent but not yet acknowledged (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), 0x5411, b"\0" * 4))[0]


def udp_echo(port: int) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.settimeout(30)
        print("ready", flush=True)
        try:
            while True:
                data, peer = s.recvfrom(CHUNK)
                s.sendto(data, peer)
        except TimeoutError:
            pass


def udp_client(addr: str, port: int, count: int) -> None:
    ok = 0
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.connect((addr, port))
        for i in range(count):
            payload = i.to_bytes(4, "big") + os.urandom(60 + i % 900)
            s.send(payload)
            try:
                if s.recv(CHUNK) == payload:
                    ok += 1
            except TimeoutError:
                pass
    print(ok, count, flush=True)


def udp_send(addr: str, port: int, sport: int, count: int) -> None:
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        s.bind(("::" if ":" in addr else "0.0.0.0", sport))
        for i in range(count):
            s.sendto(i.to_bytes(4, "big"), (addr, port))


def udp_stream(addr: str, port: int, sport: int, seconds: float, gap: float) -> None:
    """A one-way stream: datagram i (its index, then bytes derived from it)
    every gap seconds."""
    digest, n = hashlib.sha256(), 0
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        if ":" in addr:  # leaves the IPv4 port to an IPv4 stream from the same port
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::" if ":" in addr else "0.0.0.0", sport))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            payload = n.to_bytes(4, "big") + hashlib.sha256(n.to_bytes(4, "big")).digest() * 2
            s.sendto(payload, (addr, port))
            digest.update(payload)
            n += 1
            time.sleep(gap)
    print(n, digest.hexdigest(), flush=True)


def udp_sink(port: int, idle: float, first: float | None = None) -> None:
    """first: how long to wait for the first datagram (the senders' start-up
    on a loaded machine), so that idle need only cover a stream's gaps."""
    digest, n = hashlib.sha256(), 0
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.settimeout(idle if first is None else first)
        print("ready", flush=True)
        try:
            while True:
                digest.update(s.recv(CHUNK))
                n += 1
                s.settimeout(idle)
        except TimeoutError:
            pass
    print(n, digest.hexdigest(), flush=True)


def raw_socket(iface: str, proto: int = 0, promisc: bool = False) -> socket.socket:
    """An AF_PACKET socket bound to iface (proto: ETH_P_ALL to capture;
    promisc: the device promiscuous while the socket is open, as tcpdump
    makes it)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    if proto:
        s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((iface, proto))
    if promisc:
        s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                     struct.pack("iHH8s", socket.if_nametoindex(iface), PACKET_MR_PROMISC, 0, b""))
    return s


def raw_send(iface: str, frames: list[bytes], count: int, gap: float = 0) -> None:
    """gap: seconds between frames, so a long burst cannot overrun a veth's
    XDP ring (which drops what does not fit)."""
    with raw_socket(iface) as s:
        for _ in range(count):
            for frame in frames:
                s.send(frame)
                time.sleep(gap)


SOL_PACKET, PACKET_AUXDATA, TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 263, 8, 0x10, 0x40
PACKET_OUTGOING, ETH_P_ALL = 4, 3
PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC = 1, 1


def recv_frame(s: socket.socket) -> bytes | None:
    """The next frame received on a raw_socket(iface, ETH_P_ALL) as the wire
    had it: a VLAN tag the stack took into metadata is put back (as tcpdump
    does); None for a frame the namespace sent itself."""
    data, anc, _, addr = s.recvmsg(CHUNK, socket.CMSG_SPACE(20))
    if addr[2] == PACKET_OUTGOING:
        return None
    for level, kind, aux in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status = int.from_bytes(aux[0:4], "little")
            tci, tpid = int.from_bytes(aux[16:18], "little"), int.from_bytes(aux[18:20], "little")
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                data = data[:12] + tpid.to_bytes(2, "big") + tci.to_bytes(2, "big") + data[12:]
    return data


def raw_capture(ifaces: list[str], mark: bytes, count: int, timeout: float = 10, promisc: bool = False) -> None:
    """Print incoming frames that contain mark, as the wire had them (hex),
    until count of them or timeout s without one (other traffic, such as
    the stacks' own MLD and ND, does not extend it).  Several interfaces:
    each line starts with the one it came in on, and count is over all of
    them (a probe that may take either path ends the capture once all came)."""
    socks = [raw_socket(iface, ETH_P_ALL, promisc) for iface in ifaces]
    try:
        print("ready", flush=True)
        seen, deadline = 0, time.monotonic() + timeout
        while seen < count and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(socks, [], [], left)
            for s in readable:
                data = recv_frame(s)
                if data is None or mark not in data:
                    continue
                prefix = f"{s.getsockname()[0]} " if len(socks) > 1 else ""
                print(prefix + data.hex(), flush=True)
                seen, deadline = seen + 1, time.monotonic() + timeout
    finally:
        for s in socks:
            s.close()


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "tcp-server":
        tcp_server(int(args[0]), int(args[1]) if len(args) > 1 else 1)
    elif cmd == "tcp-client":
        tcp_client(args[0], int(args[1]), int(args[2]), *(float(a) for a in args[3:4]))
    elif cmd == "tcp-phases":
        tcp_paced(args[0], int(args[1]), [float(a) for a in args[2:]])
    elif cmd == "tcp-hold":
        tcp_hold(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "tcp-trickle":
        # what a stalled peer leaves unacknowledged
        tcp_paced(args[0], int(args[1]), [float(args[3])], 100, 0.2, int(args[2]))
    elif cmd == "udp-echo":
        udp_echo(int(args[0]))
    elif cmd == "udp-client":
        udp_client(args[0], int(args[1]), int(args[2]))
    elif cmd == "raw-send":
        raw_send(args[0], [bytes.fromhex(f) for f in args[1].split(",")], int(args[2]),
                 float(args[3]) if len(args) > 3 else 0)
    elif cmd in ("raw-capture", "promisc-capture"):
        raw_capture(args[0].split(","), bytes.fromhex(args[1]), int(args[2]), float(args[3]) if len(args) > 3 else 10,
                    cmd == "promisc-capture")
    elif cmd == "udp-send":
        udp_send(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "udp-stream":
        udp_stream(args[0], int(args[1]), int(args[2]), float(args[3]), float(args[4]))
    elif cmd == "udp-sink":
        udp_sink(int(args[0]), *(float(a) for a in args[1:3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
