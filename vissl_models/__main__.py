"""``python -m vissl_models ...``: the ``vissl-models`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
