"""``python -m qmcp_client.agent``: see :mod:`qmcp_client.agent.cli`."""

import sys

from qmcp_client.agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
