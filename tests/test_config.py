"""The configuration file: parsing, its errors, the default-path rules, and how the
command line's flags combine with it (no root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tna import config
from tna.config import ConfigError, Flags, Settings, Source, load, merge, read

FULL = """\
hook = "xdp"
log_level = "debug"
metrics = "[::1]:9469"
ignore = ["eth9", "wg*"]
[iface_hook]
eth1 = "tc"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tna.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg


def test_every_key(tmp_path: Path) -> None:
    assert load(write(tmp_path, FULL)) == Settings(hook="xdp", log_level="debug", metrics="[::1]:9469",
                                                   ignore=("eth9", "wg*"), iface_hook={"eth1": "tc"})


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, "# nothing set\n")) == Settings()
    assert Settings() == Settings(hook="auto", log_level="info", metrics=None, ignore=(), iface_hook={})


def test_the_example_file_parses_to_the_defaults() -> None:
    example = Path(__file__).parent.parent / "packaging" / "tna.toml.example"
    assert load(example) == Settings()  # every line commented: documentation only


@pytest.mark.parametrize(("text", "expected"), [
    ('hook = "xpd"', 'hook: expected "auto", "xdp" or "tc", got "xpd"'),
    ("hook = 1", 'hook: expected "auto", "xdp" or "tc", got 1'),
    ('log_level = "verbose"', 'log_level: expected "debug", "info", "warning" or "error", got "verbose"'),
    ('metrics = "9469"', "metrics: expected HOST:PORT"),
    ('metrics = "::1:9469"', "metrics: expected HOST:PORT"),
    ('metrics = "127.0.0.1:70000"', "metrics: expected HOST:PORT"),
    ("metrics = 9469", "metrics: expected HOST:PORT"),
    ('ignore = "eth9"', 'ignore: expected a list of interface names or shell globs, such as ["eth9", "wg*"], '
                        'got "eth9"'),
    ('ignore = ["eth9", 3]', "ignore: expected a list"),
    ('ignore = [""]', "ignore: expected a list"),
    ('iface_hook = "tc"', "iface_hook: expected a table"),
    ('[iface_hook]\neth1 = "auto"', 'iface_hook.eth1: expected "xdp" or "tc", got "auto"'),
    ('[iface_hook]\n"a/b" = "tc"', "iface_hook: 'a/b' is not an interface name"),
    ('[iface_hook]\n"sixteen-chars-xx" = "tc"', "iface_hook: 'sixteen-chars-xx' is not an interface name (1 to 15"),
])
def test_bad_values_name_the_key_and_what_is_expected(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error(tmp_path, text + "\n")


def test_an_unknown_key_is_named_with_the_known_ones(tmp_path: Path) -> None:
    msg = error(tmp_path, 'hooks = "xdp"\n')
    assert "unknown key 'hooks' (known: hook, log_level, metrics, ignore, iface_hook)" in msg


def test_bad_toml_says_where(tmp_path: Path) -> None:
    assert "not valid TOML" in error(tmp_path, 'hook = "xdp\n') and "line 1" in error(tmp_path, 'hook = "xdp\n')
    assert "not valid TOML" in error(tmp_path, 'hook = "xdp"\nhook = "tc"\n')  # a key given twice


def test_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load(tmp_path)  # a directory
    path = write(tmp_path, "")
    path.write_bytes(b'hook = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


# --- which file ---------------------------------------------------------------


def test_config_flag_must_exist(tmp_path: Path) -> None:
    src = config.source(str(tmp_path / "absent.toml"), {"TNA_CONFIG": "/elsewhere.toml"})
    assert src == Source(tmp_path / "absent.toml", True)
    with pytest.raises(ConfigError, match="no such file"):
        read(src)


def test_tna_config_is_read_if_it_exists(tmp_path: Path) -> None:
    path = write(tmp_path, 'hook = "tc"\n')
    assert read(config.source(None, {"TNA_CONFIG": str(path)})).hook == "tc"
    src = config.source(None, {"TNA_CONFIG": str(tmp_path / "R.toml")})  # a namespace without a file
    assert src == Source(tmp_path / "R.toml", False) and read(src) == Settings()


def test_the_default_file_is_read_only_if_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.source(None, {}) == Source(Path("/etc/tna/tna.toml"), False)
    assert config.source(None, {"TNA_CONFIG": ""}) == Source(Path("/etc/tna/tna.toml"), False)
    assert read(Source(tmp_path / "tna.toml", False)) == Settings()
    write(tmp_path, 'log_level = "nonsense"\n')
    with pytest.raises(ConfigError):  # an existing default file is checked like any other
        read(Source(tmp_path / "tna.toml", False))


# --- precedence -----------------------------------------------------------------

FILE = Settings(hook="xdp", log_level="warning", metrics="127.0.0.1:9469", ignore=("eth9", "wg*"),
                iface_hook={"eth1": "tc", "eth2": "xdp"})


def test_no_flags_keeps_the_file() -> None:
    assert merge(FILE, Flags()) == FILE


def test_flags_win_per_key() -> None:
    s = merge(FILE, Flags(hook="tc", log_level="debug", metrics="[::1]:9100"))
    assert (s.hook, s.log_level, s.metrics) == ("tc", "debug", "[::1]:9100")
    assert s.ignore == FILE.ignore and s.iface_hook == FILE.iface_hook


def test_iface_hook_merges_per_interface_the_flag_winning() -> None:
    s = merge(FILE, Flags(iface_hook={"eth2": "tc", "eth3": "xdp"}))
    assert s.iface_hook == {"eth1": "tc", "eth2": "tc", "eth3": "xdp"}
    assert FILE.iface_hook == {"eth1": "tc", "eth2": "xdp"}  # the file's settings untouched


def test_ignore_adds_to_the_file() -> None:
    assert merge(FILE, Flags(ignore=("wg*", "tap0"))).ignore == ("eth9", "wg*", "tap0")


def test_changes_are_listed_for_the_log() -> None:
    new = merge(FILE, Flags(hook="tc", ignore=("tap0",)))
    assert config.changes(FILE, new) == ['hook: "xdp" -> "tc"', 'ignore: ["eth9", "wg*"] -> ["eth9", "wg*", "tap0"]']
    assert config.changes(FILE, FILE) == []


# --- the command line --------------------------------------------------------------


def tna_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tna", "run", *args], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)


def test_a_bad_file_at_start_is_one_line_and_status_2(tmp_path: Path) -> None:
    path = write(tmp_path, 'hook = "xdp"\nignore = "eth9"\n')
    res = tna_run("--config", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f'tna: {path}: ignore: expected a list of interface names or shell globs, such as ["eth9", "wg*"], '
        'got "eth9"']


def test_a_missing_config_flag_file_is_an_error(tmp_path: Path) -> None:
    res = tna_run("--config", str(tmp_path / "absent.toml"))
    assert res.returncode == 2 and res.stderr.strip() == f"tna: {tmp_path / 'absent.toml'}: no such file"


@pytest.mark.parametrize(("args", "expected"), [
    (("--iface-hook", "eth1=auto"), "expected IFACE=xdp or IFACE=tc"),
    (("--metrics", "localhost"), "HOST:PORT"),
    (("--ignore", ""), "empty"),
    (("--log-level", "loud"), "invalid choice"),
])
def test_bad_flags_are_usage_errors(args: tuple[str, ...], expected: str) -> None:
    res = tna_run(*args)
    assert res.returncode == 2 and expected in res.stderr and "Traceback" not in res.stderr
