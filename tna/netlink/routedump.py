"""The route dump, streamed: a full table is a million messages.

pyroute2's socket hands each dump message through its asyncio loop (about
110 us apiece here); its marshal alone parses one in about 60.  So routes
are dumped on a socket of their own: pyroute2 encodes the request and
parses every datagram (the route messages with routemsg.py's decoder),
this module only sends and receives.  Its records
are not ordered with the event socket's messages; the model holds a
family's route events until its dump is done (tna/model/routes.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from pyroute2.netlink import NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

from tna.model.routes import Route
from tna.netlink.factmsg import FactMsg
from tna.netlink.nexthop import Marshal, route_msg
from tna.netlink.routemsg import decode_routes_fast

NETLINK_ROUTE = 0
RTM_GETROUTE = 26
RECV_BYTES = 1 << 20      # one recv: a few thousand route messages
RCVBUF_BYTES = 4 << 20


def dump_routes(family: int) -> Iterator[Route]:
    """Every route of family (all tables), as it is parsed.  Raises
    NetlinkDumpInterrupted if the tables changed under the dump (the caller
    dumps again) and OSError for a netlink error."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        s.bind((0, 0))
        req = route_msg()
        req["family"] = family
        req["header"]["type"] = RTM_GETROUTE
        req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        req["header"]["sequence_number"] = 1
        req.encode()
        s.send(req.data)
        marshal = Marshal()
        decode_routes_fast(marshal)
        while True:
            for msg in marshal.parse(s.recv(RECV_BYTES)):
                header = msg["header"]
                if header.get("error") is not None:
                    raise OSError(f"route dump: {header['error']}")
                if header["type"] == NLMSG_ERROR:
                    continue  # an ack without an error
                if header["type"] == NLMSG_DONE:
                    if header["flags"] & NLM_F_DUMP_INTR:
                        raise NetlinkDumpInterrupted()
                    return
                if isinstance(msg, FactMsg):  # a route of a family the model follows
                    yield msg.fact
