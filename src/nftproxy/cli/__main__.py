"""``python -m nftproxy.cli``."""

import sys

from nftproxy.cli.main import main

sys.exit(main())
