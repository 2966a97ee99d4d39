"""``python -m pyxlio.emu [options] -- CMD ARGS...``: run a program under the XLIO emulator."""

import sys

from pyxlio.emu import _main

sys.exit(_main())
