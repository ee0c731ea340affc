import sys

from tna.cli import main

sys.exit(main())
