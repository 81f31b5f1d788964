"""``python -m prunestudio.gui``"""

import sys

from .app import main

sys.exit(main())
