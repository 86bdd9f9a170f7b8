"""The canary: which of the two served versions answers a request, and which challengers may be served at all.

A challenger is a retrained version of the champion, put beside it to compare error rate and latency on a share of
real traffic before it is promoted. A version with another tokenizer or another network shape is a different model:
it would accept other prompts (characters outside one vocabulary), see another context window, and cost another
amount of memory, so a comparison would measure the change of model rather than the retraining, and a share of
users would silently get it. Such a version is refused as a challenger (it can still be made champion, a deliberate
decision).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

from inference.loading import LoadedModel

Role = Literal["champion", "challenger"]
"""The part a served version plays, whatever its registry alias is called (the `alias` metric label)."""
CHAMPION: Role = "champion"
CHALLENGER: Role = "challenger"

SHAPE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
"""The `GPTConfig` fields a challenger must share with the champion (dropout does nothing at inference; bias is in
the weights' names and shapes, which loading already checked against the config)."""

# Reasons a challenger is refused: the `reason` label of inference_challenger_refusals_total.
REFUSED_LOAD = "load_failed"
REFUSED_TOKENIZER = "tokenizer"
REFUSED_SHAPE = "shape"


def sticky_point(user: str, salt: str) -> float:
    """Where `user` falls in [0, 100): the same for the same user and salt in every process (a hash, not Python's
    `hash`, which is randomised per process), so every replica sends a user the same way."""
    digest = hashlib.sha256(f"{salt}\x00{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass(slots=True)
class Router:
    """Sends `percent` of the requests to the challenger: by the `user` field's sticky point when `sticky` and the
    request has one, else by a random draw."""

    percent: float
    sticky: bool
    rng: random.Random = field(default_factory=random.Random)

    def to_challenger(self, user: str | None, challenger_version: str) -> bool:
        """Whether this request goes to the challenger.

        The sticky point is salted with the challenger's version: a user keeps the same version for as long as the
        share and the challenger stay, and each new challenger is tried on a new cohort rather than on the same
        users every time. Raising the share only moves users from the champion to the challenger, never back.
        """
        if self.sticky and user:
            return sticky_point(user, challenger_version) < self.percent
        return self.rng.random() * 100 < self.percent


def incompatibility(champion: LoadedModel, challenger: LoadedModel) -> tuple[str, str] | None:
    """Why `challenger` may not serve beside `champion`, as (reason label, message), or None if it may."""
    mine, theirs = champion.tokenizer.chars, challenger.tokenizer.chars
    if mine != theirs:
        known = set(mine)
        lacks = [ch for ch in mine if ch not in set(theirs)]
        adds = [ch for ch in theirs if ch not in known]
        parts = [
            f"lacks {len(lacks)} of its characters ({_chars(lacks)})" if lacks else "",
            f"has {len(adds)} characters it lacks ({_chars(adds)})" if adds else "",
        ]
        what = " and ".join(p for p in parts if p) or "numbers the same characters differently"
        return REFUSED_TOKENIZER, f"its tokenizer differs from the champion's (version {champion.version}): it {what}"
    differences = [
        f"{key} {getattr(challenger.model.config, key)} (champion: {getattr(champion.model.config, key)})"
        for key in SHAPE_FIELDS
        if getattr(challenger.model.config, key) != getattr(champion.model.config, key)
    ]
    if differences:
        return REFUSED_SHAPE, (
            f"its model shape differs from the champion's (version {champion.version}): {', '.join(differences)}"
        )
    return None


def _chars(chars: list[str]) -> str:
    return ", ".join(repr(ch) for ch in chars[:10]) + (", ..." if len(chars) > 10 else "")
