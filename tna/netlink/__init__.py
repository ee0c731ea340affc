"""Netlink sockets (pyroute2), resync, and the few /proc reads the model needs."""
