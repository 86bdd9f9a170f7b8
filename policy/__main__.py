"""Entry point the Pulumi CLI runs for `--policy-pack policy`. Constructing the PolicyPack serves it."""

import sys
from pathlib import Path

from pulumi_policy import EnforcementLevel, PolicyPack

# The CLI runs this file with policy/ as the working directory; the rules live beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from policies import POLICIES

PolicyPack(name="ml-platform", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
