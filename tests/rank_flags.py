"""`antdiff train` under torchrun where rank 1 gets extra flags (after `--`): a misconfigured
launch, as when ranks are started by hand or by a cluster script with per-node settings."""

import os
import sys

from antdiff.__main__ import main

if __name__ == "__main__":
    cut = sys.argv.index("--")
    common, extra = sys.argv[1:cut], sys.argv[cut + 1 :]
    sys.argv = [sys.argv[0], *common, *(extra if os.environ.get("RANK") == "1" else [])]
    sys.exit(main())
