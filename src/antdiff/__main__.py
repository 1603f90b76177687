import sys

from antdiff.cli import main

sys.exit(main())
