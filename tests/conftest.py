"""Shared fixtures.  Tests marked `root` build network namespaces and load
BPF; CI runs as root, elsewhere they are skipped with that reason."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from netns_labs.lab import BridgeLab, Lab, RouterLab
from netns_labs.tna_proc import Tna, tna_running

HOOKS = ("auto", "xdp")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces and BPF")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def router_lab() -> Iterator[RouterLab]:
    with RouterLab() as lab:
        yield lab


@pytest.fixture(params=HOOKS)
def hook(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def accelerated(router_lab: RouterLab, hook: str) -> Iterator[tuple[RouterLab, Tna]]:
    """The router lab with `tna run --hook HOOK` on r, attached to both ports."""
    with tna_running(router_lab, router_lab.r, hook, ["r-h1", "r-h2"], [router_lab.h1, router_lab.h2]) as tna:
        yield router_lab, tna


@pytest.fixture(scope="module")
def lab() -> Iterator[RouterLab]:
    """The router lab plus routes of every kind, for BPF_PROG_RUN tests."""
    from tests.harness import EXTRA_ROUTES

    with RouterLab() as lab:
        for cmd in EXTRA_ROUTES:
            lab.run(lab.r, cmd)
        yield lab


def _harness(kind: str, lab: Lab, hook: str) -> Iterator:
    from tests import harness

    h = getattr(harness, kind)(lab, hook)
    yield h
    h.close()


@pytest.fixture(scope="module", params=["xdp", "tc"])
def harness(request: pytest.FixtureRequest, lab: RouterLab) -> Iterator:
    """The router module for ingress r-h1, under BPF_PROG_RUN, per hook."""
    yield from _harness("RouterHarness", lab, request.param)


@pytest.fixture(scope="module")
def fwlab(lab: RouterLab) -> RouterLab:
    """The router lab for firewall BPF_PROG_RUN tests: 198.51.100.7 and
    2001:db8:2::7 live on h2 too."""
    lab.neigh(lab.r, "r-h2", "198.51.100.7", lab.h2.mac)
    lab.neigh(lab.r, "r-h2", "2001:db8:2::7", lab.h2.mac)
    return lab


@pytest.fixture(scope="module")
def blab() -> Iterator[BridgeLab]:
    """The routed bridge lab, for BPF_PROG_RUN tests of the bridge module."""
    with BridgeLab(routed=True) as lab:
        # resolved next hops, so the router's FIB lookups succeed
        lab.neigh(lab.b, "b-h4", lab.h4.ip4, lab.h4.mac)
        lab.neigh(lab.b, "br1", lab.h5.ip4, lab.h5.mac)
        yield lab


@pytest.fixture(scope="module", params=["xdp", "tc"])
def bh(request: pytest.FixtureRequest, blab: BridgeLab) -> Iterator:
    """The fdb, bridge and router modules for ingress b-h1, under BPF_PROG_RUN, per hook."""
    yield from _harness("BridgeHarness", blab, request.param)
