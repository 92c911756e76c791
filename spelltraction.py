"""SpellTraction: a massively multiplayer letter game on netcore."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__version__ = "0.1.0"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="spelltraction", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
