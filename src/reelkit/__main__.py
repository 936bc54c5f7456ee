import sys

from reelkit.cli import main

sys.exit(main())
