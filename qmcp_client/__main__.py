"""``python -m qmcp_client``: see :mod:`qmcp_client.cli`."""

import sys

from qmcp_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
