import sys

from textgan.cli import main

sys.exit(main())
