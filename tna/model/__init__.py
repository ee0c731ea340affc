"""Pure model of the kernel's configuration (no I/O)."""

from tna.model.config import Addr, Link, Model, Neigh, Route, Sysctls

__all__ = ["Addr", "Link", "Model", "Neigh", "Route", "Sysctls"]
