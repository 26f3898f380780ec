"""``python -m runtime.worker``: one worker process."""

import sys

from runtime.worker.process import main

sys.exit(main())
