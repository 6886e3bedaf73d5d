"""``python -m receiver.cli``: the ``kling-hooks`` command."""

import sys

from receiver.cli import main

sys.exit(main())
