"""Entry point of `pulumi up` / `pulumi preview` (Pulumi.yaml `main`)."""

import sys
from pathlib import Path

# Pulumi runs this file as a script, with infra/ (not the repository root) on sys.path; the program imports
# itself as the `infra` package, so put the root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi

from infra.config import ConfigError
from infra.program import main

try:
    main()
except ConfigError as err:
    # RunError prints just the message: the list of problems, without a Python traceback.
    raise pulumi.RunError(str(err)) from None
