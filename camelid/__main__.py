"""python -m camelid"""

import sys

from camelid.cli.main import main

sys.exit(main())
