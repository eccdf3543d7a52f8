"""`python -m atp_server ...` is the `atp` command."""
import sys

from .cli import main

sys.exit(main())
