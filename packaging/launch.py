"""Entry script of the frozen desktop app (PyInstaller)."""

import sys

from prunestudio.gui.app import main

if __name__ == "__main__":
    sys.exit(main())
