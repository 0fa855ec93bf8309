"""``python -m circuitviz`` runs the command line (see :mod:`circuitviz.cli`)."""

import sys

from .cli import main

sys.exit(main())
