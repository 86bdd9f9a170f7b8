"""What the gate reads and writes in MLflow: the aliases, and the decision on a challenger version.

The decision's tags are written before any alias moves, the decision tag itself last of them: a version that
carries it is never decided again, so a restarted gate (or a second one started by mistake) cannot flip a
decision, and a gate that dies half way through an action finishes it when it comes back (the aliases are moved
again from the recorded decision)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow import MlflowClient

from workloads.contracts import CANARY_DECIDED_AT_TAG, CANARY_DECISION_TAG, CANARY_REASON_TAG

PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
REASON_LIMIT = 4900
"""MLflow keeps tag values up to 5000 characters (older servers: 250); reasons are far shorter."""


@dataclass(frozen=True, slots=True)
class Aliases:
    champion: str | None
    challenger: str | None


class Registry:
    def __init__(self, client: MlflowClient, model_name: str, champion_alias: str, challenger_alias: str) -> None:
        self.client = client
        self.model_name = model_name
        self.champion_alias = champion_alias
        self.challenger_alias = challenger_alias

    def aliases(self) -> Aliases:
        aliases = self.client.get_registered_model(self.model_name).aliases or {}
        return Aliases(aliases.get(self.champion_alias), aliases.get(self.challenger_alias))

    def decision_of(self, version: str) -> str | None:
        tags = self.client.get_model_version(self.model_name, version).tags or {}
        return tags.get(CANARY_DECISION_TAG)

    def record(self, version: str, decision: str, reason: str) -> None:
        # The decision tag last: whoever sees it (a reader, another gate) also sees the reason and the time.
        for key, value in (
            (CANARY_REASON_TAG, reason[:REASON_LIMIT]),
            (CANARY_DECIDED_AT_TAG, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
            (CANARY_DECISION_TAG, decision),
        ):
            self.client.set_model_version_tag(self.model_name, version, key, value)

    def apply(self, version: str, decision: str) -> None:
        """Move the aliases as `decision` on `version` says, if the challenger alias still points to it (re-read
        right before acting: an operator may have moved it meanwhile, and then the gate leaves it alone)."""
        if self.aliases().challenger != version:
            return
        if decision == PROMOTED:
            self.client.set_registered_model_alias(self.model_name, self.champion_alias, version)
        self.client.delete_registered_model_alias(self.model_name, self.challenger_alias)
