"""``python -m weightslab.cli``: the same as the ``weightslab`` command."""

import sys

from weightslab.cli.main import main

sys.exit(main())
