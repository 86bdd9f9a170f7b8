"""Kubernetes resource quantities (`500m`, `4Gi`, `1e3`) as exact decimals."""

from __future__ import annotations

import re
from decimal import Decimal

QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$"
"""Kubernetes' quantity grammar (unsigned): a decimal number, then a binary or decimal suffix or an exponent. The
one definition: parse_quantity here, the TrainingJob CRD's OpenAPI patterns and the SkyPilot amounts of
skyrun/task_spec.py all use it."""
_QUANTITY = re.compile(QUANTITY_PATTERN)
_SUFFIX = {
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
    "E": Decimal(10**18), "": Decimal(1),
}  # fmt: skip


def split_quantity(text: str) -> tuple[Decimal, str]:
    """The number and the suffix of a Kubernetes quantity (`1.5Gi` -> (1.5, "Gi"), `1e3` -> (1, "e3")); ValueError
    if it does not parse. The number is never negative, so the quantity is > 0 exactly when the number is."""
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    return Decimal(match.group(1)), match.group(3) or ""


def parse_quantity(text: str) -> Decimal:
    """Value of a Kubernetes quantity (`500m` -> 0.5, `4Gi` -> 4294967296); ValueError if it does not parse."""
    number, suffix = split_quantity(text)
    if suffix[:1] in ("e", "E"):
        return Decimal(f"{number}{suffix}")  # exact, without the context's exponent limits
    return number * _SUFFIX[suffix]


# Largest first: binary suffixes (byte amounts) then decimal ones, from the one table above.
_DECIMAL_UP = ("E", "P", "T", "G", "M", "k")
_FORMAT_SUFFIXES = {
    True: [(k, _SUFFIX[k]) for k in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki", *_DECIMAL_UP)],
    False: [(k, _SUFFIX[k]) for k in _DECIMAL_UP],
}


def format_quantity(value: Decimal, *, binary: bool) -> str:
    """The shortest exact Kubernetes spelling: `16Gi`, `1500m`, `3`; byte amounts may use binary suffixes."""
    if value == value.to_integral_value():
        whole = int(value)
        candidates = [str(whole)]
        for suffix, size in _FORMAT_SUFFIXES[binary]:
            if whole and whole % int(size) == 0:
                candidates.append(f"{whole // int(size)}{suffix}")
        return min(candidates, key=len)
    milli = value * 1000
    if milli == milli.to_integral_value():
        return f"{int(milli)}m"
    return format(value.normalize(), "f")
