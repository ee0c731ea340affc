#!/usr/bin/env bash
# The one entry point on a fresh Debian machine, as root.  It installs what
# TNA needs (Debian packages, a venv in .venv with the Python packages), then:
#   setup.sh demo          the router lab: Linux vs TNA, before/after
#   setup.sh test [ARGS]   ruff + the test suite (pytest ARGS)
#   setup.sh bench [ARGS]  the side-by-side benchmark and its charts (docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "run as root: TNA loads BPF programs and builds network namespaces" >&2
    exit 1
fi

APT_PKGS=(clang llvm libbpf1 libbpf-dev bpftool gcc libc6-dev iproute2 ethtool iptables nftables conntrack ipset
          iperf3 iputils-ping procps util-linux python3 python3-venv)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cmd=${1:-}
[ $# -gt 0 ] && shift
extras=test
[ "$cmd" = bench ] && extras=test,plots  # the benchmark renders its charts with matplotlib

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"

case "$cmd" in
    demo)  exec .venv/bin/python -m netns_labs.demo "$@" ;;
    bench) exec .venv/bin/python -m netns_labs.bench "$@" ;;
    test)
        .venv/bin/ruff check .
        # pytest exits 5 when it collected no test: that is a failure here too.
        # Lab tests mostly wait on the kernel, so files run in TNA_TEST_WORKERS
        # processes (a file's module fixtures, its labs, stay in one)
        exec .venv/bin/python -m pytest -p no:cacheprovider -n "${TNA_TEST_WORKERS:-3}" --dist loadfile "$@" ;;
    *) echo "usage: $0 demo|test|bench [ARGS]" >&2; exit 2 ;;
esac
