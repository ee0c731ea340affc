"""TNA: transparent network acceleration for an ordinary Linux box."""

from pathlib import Path

__version__ = "0.1.0"

# Templates and C headers sit beside the package in the source tree, which is
# installed editable (pip install -e .): the daemon renders and compiles them.
ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = ROOT / "fpm_templates"
HELPERS_DIR = ROOT / "helpers"
