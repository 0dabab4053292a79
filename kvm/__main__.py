"""`python -m kvm caps|info`: see kvm/cli.py."""

import sys

from .cli import main

sys.exit(main())
