"""`python -m pooledmail_anyio demo`."""

import sys

from ._cli import main

sys.exit(main())
