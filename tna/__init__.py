"""TNA: transparent network acceleration for an ordinary Linux box."""

from pathlib import Path

__version__ = "0.1.0"

# Templates and C headers live beside the package in the source tree and are
# installed as package data (see pyproject.toml).
_here = Path(__file__).resolve().parent
_shipped = _here / "_data"
DATA_DIR = _shipped if _shipped.is_dir() else _here.parent
TEMPLATE_DIR = DATA_DIR / "fpm_templates"
HELPERS_DIR = DATA_DIR / "helpers"
