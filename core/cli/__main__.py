"""``python -m prunestudio.core.cli``"""

import sys

from .main import main

sys.exit(main())
