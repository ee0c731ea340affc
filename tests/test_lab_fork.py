"""The labs' own hygiene: pyroute2 forks the test process to create
namespaces and their sockets, and a forked copy that unwinds (a signal
handler raising in it, say) runs the parent's `finally` blocks; a lab
closed there must not take the parent's namespaces with it."""

from __future__ import annotations

import os

import pytest

from netns_labs.lab import Lab

pytestmark = pytest.mark.root


def test_a_forked_copy_closing_a_lab_leaves_the_parents_namespaces() -> None:
    with Lab() as lab:
        ns = lab.add_ns("a")
        pid = os.fork()
        if pid == 0:  # the copy: what an unwinding fork would do
            try:
                lab.close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert os.path.exists(f"/run/netns/{ns}")
        lab.run(ns, ["true"])
    assert not os.path.exists(f"/run/netns/{ns}")
