import sys

from mixerlab.cli.main import main

sys.exit(main())
