"""``python -m prunestudio.core.cli``"""

import sys

from .commands import main

sys.exit(main())
