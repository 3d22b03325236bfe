"""``python -m torchrl_otc.cli``: the ``otc`` command."""

import sys

from torchrl_otc.cli import main

sys.exit(main())
