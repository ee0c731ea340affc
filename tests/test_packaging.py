"""From the checkout: `python -m build` makes an sdist and, from the sdist, a
wheel; both carry the templates and headers, the wheel no test labs;
installed (not editable) into a fresh venv outside the checkout, in a lab:
`tna check` passes, `tna run` accelerates, `/metrics` serves the counters,
`tna status` works from another shell; the installed script and renderer
run.  The sdist's own install is that build (`pip install` of an sdist runs
the same PEP 517 backend on it) and that install: one venv serves both.
Needs root (the lab) and PyPI (build isolation, tna's dependencies)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns_labs.lab import RouterLab, ping
from netns_labs.tna_proc import Tna, tna_leftovers
from tests.test_metrics import _fetch

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 300) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sdist and the wheel built from it (build's default)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, REPO], cwd=out)
    yield out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (outside the checkout) with the wheel installed, its
    dependencies from the index; its bin/."""
    (wheel,) = dist.glob("tna-*.whl")
    tmp = tmp_path_factory.mktemp("installed")
    venv.create(tmp / "venv", with_pip=True)
    bin_dir = tmp / "venv" / "bin"
    _run([bin_dir / "pip", "install", "-q", "--disable-pip-version-check", wheel], cwd=tmp)
    return bin_dir


def test_wheel_and_sdist_carry_templates_and_headers_not_the_labs(dist: Path) -> None:
    (wheel,) = dist.glob("tna-*.whl")
    (sdist,) = dist.glob("tna-*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as tar:  # tna-VERSION/tna/...
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for kind, pattern in (("fpm_templates", "*.j2"), ("helpers", "*.h")):
        shipped = sorted(p.name for p in (REPO / "tna" / kind).glob(pattern))
        assert shipped and all(f"tna/{kind}/{n}" in names for n in shipped), (kind, sorted(names))
        assert all(f"tna/{kind}/{n}" in in_sdist for n in shipped), (kind, sorted(in_sdist))
    assert not [n for n in names if n.split("/")[0] in ("netns_labs", "tests")]


def test_wheel_installs_and_accelerates_a_lab(dist: Path, installed: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("tna-*.whl")
    bin_dir = installed
    where = _run([bin_dir / "python", "-c", "import tna; print(tna.__version__, tna.HELPERS_DIR)"], cwd=tmp_path)
    version, helpers = where.split()
    assert wheel.name.startswith(f"tna-{version}-") and helpers.startswith(str(bin_dir.parent))
    with RouterLab() as lab:
        check = lab.run(lab.r, [str(bin_dir / "tna"), "check"], check=False, cwd=tmp_path, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        # an empty cache: the wheel's own headers compile the programs
        tna = Tna(lab, lab.r, "--metrics", "127.0.0.1:9469", command=[str(bin_dir / "tna")], cwd=tmp_path,
                  env_extra={"TNA_CACHE_DIR": str(tmp_path / "cache")})
        try:
            tna.wait_attached(["r-h1", "r-h2"], timeout=60)  # through the venv's `tna status --json`
            assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
            assert tna.counters().get("FORWARDED", 0) >= 3
            metrics = _fetch(lab, lab.r, 9469)
            assert 'tna_packets_total{hook="tc",iface="r-h1",reason="FORWARDED"}' in metrics, metrics
        finally:
            rc = tna.stop()
        out = tna.close()
        assert rc == 0, out
        assert tna_leftovers(lab, lab.r) == ""
    assert list((tmp_path / "cache").glob("*.o"))


def test_installed_script_and_renderer_run(dist: Path, installed: Path, tmp_path: Path) -> None:
    bin_dir = installed
    assert "usage: tna" in _run([bin_dir / "tna", "--help"], cwd=tmp_path)
    (sdist,) = dist.glob("tna-*.tar.gz")
    assert sdist.name == _run([bin_dir / "tna", "--version"], cwd=tmp_path).strip().replace(" ", "-") + ".tar.gz"
    # the templates came along: a program renders
    src = _run([bin_dir / "python", "-c", "from tna.synth.render import render; print(render('xdp', ('router',)))"],
               cwd=tmp_path)
    assert "tna_abi.h" in src
