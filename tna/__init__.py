"""TNA: transparent network acceleration for an ordinary Linux box."""

from importlib.resources import files
from pathlib import Path

__version__ = "0.1.0"


def _data_dir(name: str) -> Path:
    """A data directory shipped inside the package.  clang takes `-I` and
    Jinja a loader path, so it must be a real directory: it is for a source
    checkout, an editable install and an installed wheel, not for a zip."""
    res = files(__name__) / name
    if not isinstance(res, Path) or not res.is_dir():
        raise RuntimeError(f"tna: {name}/ is not a directory on disk ({res}); install tna unpacked, not zipped")
    return res


TEMPLATE_DIR = _data_dir("fpm_templates")
HELPERS_DIR = _data_dir("helpers")
