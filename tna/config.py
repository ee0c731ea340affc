"""The configuration file of `tna run`, and how the command line combines with it.

Parsing only: reading the file is the one I/O.  The file is TOML, every key optional:

    hook = "auto"                 # auto | xdp | tc (auto: XDP on NICs, TC on veth/tap)
    log_level = "info"            # debug | info | warning | error
    metrics = "127.0.0.1:9469"    # HOST:PORT to serve Prometheus /metrics on ([::1]:9469 for IPv6)
    ignore = ["eth9", "wg*"]      # interfaces left alone: shell globs (fnmatch) on the name
    [iface_hook]
    eth1 = "tc"                   # per-interface hook: xdp | tc

Which file: `--config FILE` (it must exist), else $TNA_CONFIG, else /etc/tna/tna.toml; those two
are read only if they exist (no file: the defaults).  Command-line flags win per key;
`--iface-hook` merges per interface (the flag wins) and `--ignore` adds to the file's list.  An
interface both ignored and given a hook is left alone.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tna.synth.planner import HOOK_MODES

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/tna/tna.toml")
ENV_VAR = "TNA_CONFIG"

IFACE_HOOKS = tuple(h for h in HOOK_MODES if h != "auto")
LOG_LEVELS = ("debug", "info", "warning", "error")
IFNAMSIZ = 16


class ConfigError(Exception):
    """A configuration the daemon cannot use: one line naming the file, the key and what is expected."""


@dataclass(frozen=True)
class Settings:
    """What `tna run` does, once file and flags are combined.  (iface_hook is a mapping:
    Settings are compared, never hashed.)"""

    hook: str = "auto"
    log_level: str = "info"
    metrics: str | None = None
    ignore: tuple[str, ...] = ()
    iface_hook: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Flags:
    """What the command line said: None or empty where a flag was not given."""

    hook: str | None = None
    log_level: str | None = None
    metrics: str | None = None
    ignore: tuple[str, ...] = ()
    iface_hook: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """The file to read at start and again on SIGHUP."""

    path: Path
    required: bool  # named with --config: a missing file is an error, not the defaults


def merge(file: Settings, flags: Flags) -> Settings:
    """The settings in force: each flag given wins over the file's key."""
    return Settings(
        hook=flags.hook or file.hook,
        log_level=flags.log_level or file.log_level,
        metrics=flags.metrics or file.metrics,
        ignore=tuple(dict.fromkeys((*file.ignore, *flags.ignore))),
        iface_hook={**file.iface_hook, **flags.iface_hook},
    )


def source(config_flag: str | None, environ: Mapping[str, str]) -> Source:
    if config_flag is not None:
        return Source(Path(config_flag), True)
    env = environ.get(ENV_VAR)
    return Source(Path(env) if env else DEFAULT_PATH, False)


def read(src: Source) -> Settings:
    if not src.required and not src.path.exists():
        return Settings()
    return load(src.path)


def load(path: Path) -> Settings:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(doc, str(path))


def parse(doc: Mapping[str, Any], where: str) -> Settings:
    """A decoded TOML document -> Settings; where names it in errors."""
    known = [f.name for f in fields(Settings)]
    for key in doc:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")

    def bad(key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: expected {expected}, got {_toml(value)}")

    out: dict[str, Any] = {}
    for key, choices in (("hook", HOOK_MODES), ("log_level", LOG_LEVELS)):
        if key in doc:
            if doc[key] not in choices:
                raise bad(key, doc[key], _one_of(choices))
            out[key] = doc[key]
    if "metrics" in doc:
        value = doc["metrics"]
        if not isinstance(value, str) or host_port_error(value):
            raise bad("metrics", value, 'HOST:PORT such as "127.0.0.1:9469" or "[::1]:9469"')
        out["metrics"] = value
    if "ignore" in doc:
        value = doc["ignore"]
        if not isinstance(value, list) or any(not isinstance(g, str) or glob_error(g) for g in value):
            raise bad("ignore", value, 'a list of interface names or shell globs, such as ["eth9", "wg*"]')
        out["ignore"] = tuple(value)
    if "iface_hook" in doc:
        table = doc["iface_hook"]
        if not isinstance(table, dict):
            raise bad("iface_hook", table, 'a table of IFACE = "xdp" or "tc" ([iface_hook] then eth1 = "tc")')
        for name, hook in table.items():
            if why := ifname_error(name):
                raise ConfigError(f"{where}: iface_hook: {name!r} is not an interface name ({why})")
            if hook not in IFACE_HOOKS:
                raise bad(f"iface_hook.{name}", hook, _one_of(IFACE_HOOKS))
        out["iface_hook"] = dict(table)
    return Settings(**out)


def changes(old: Settings, new: Settings) -> list[str]:
    """What differs, one "key: old -> new" each, for the log."""
    return [f"{f.name}: {_toml(getattr(old, f.name))} -> {_toml(getattr(new, f.name))}"
            for f in fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]


def reread_settings(current: Settings, reread: Callable[[], Settings]) -> Settings:
    """SIGHUP's settings: reread() (the file and the flags), or current if
    it raises ConfigError; what changed goes to the log."""
    try:
        new = reread()
    except ConfigError as e:
        log.error("SIGHUP: %s; keeping the previous settings", e)
        return current
    if new.metrics != current.metrics:
        log.warning("SIGHUP: metrics = %s takes effect when tna restarts (the server binds once; "
                    "it stays %s)", new.metrics or "(none)", current.metrics or "off")
        new = replace(new, metrics=current.metrics)
    diff = changes(current, new)
    log.info("SIGHUP: configuration re-read: %s", "; ".join(diff) if diff else "nothing changed")
    return new


def ifname_error(name: str) -> str | None:
    """Why name cannot be a Linux interface name (the kernel's dev_valid_name()), None if it can."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        return f"1 to {IFNAMSIZ - 1} bytes"
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        return 'no "/", ":" or white space'
    return None


def glob_error(glob: str) -> str | None:
    """Why glob cannot match an interface name, None if it can."""
    if not glob:
        return "empty"
    if "/" in glob or any(c.isspace() for c in glob):
        return 'no "/" or white space'
    return None


_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})")


def split_host_port(text: str) -> tuple[str, int] | None:
    """HOST:PORT, an IPv6 host in brackets ([::1]:9469) -> (host, port), or None."""
    m = _HOST_PORT.fullmatch(text)
    port = int(m.group(2) or m.group(4)) if m else 0
    return (m.group(1) or m.group(3), port) if m and 0 < port < 65536 else None


def host_port_error(text: str) -> str | None:
    """Why text is not HOST:PORT, None if it is."""
    return None if split_host_port(text) else "HOST:PORT with a port 1-65535, e.g. 127.0.0.1:9469 or [::1]:9469"


def _one_of(choices: tuple[str, ...]) -> str:
    quoted = [f'"{c}"' for c in choices]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def _toml(value: Any) -> str:
    """value as the file would spell it (near enough for a message)."""
    if value is None:
        return "(none)"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, default=str)
