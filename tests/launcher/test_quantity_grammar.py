"""One quantity grammar: Kubernetes' own (workloads.quantity), which the TrainingJob CRD's patterns and the SkyPilot
task parser reuse, with SkyPilot's `N+` and bare-number-means-GiB on top."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from skyrun.task_spec import parse_cpus, parse_memory
from workloads.quantity import parse_quantity
from workloads.trainingjob import crd

VALID = {"500m": Decimal("0.5"), "4Gi": Decimal(4 * 2**30), "1e3": Decimal(1000), ".5": Decimal("0.5"),
         "1.": Decimal(1), "16": Decimal(16), "2Ki": Decimal(2048), "1.5G": Decimal(1_500_000_000)}  # fmt: skip
INVALID = ["-1", "4GB", "abc", "", "1 Gi", "4Gi+", "1.5.5", "Gi", "1e"]


def compute_patterns() -> set[str]:
    (version,) = crd()["spec"]["versions"]
    resources = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["resources"]
    return {
        field["pattern"]
        for part in ("requests", "limits")
        for field in resources["properties"][part]["properties"].values()
    }


@pytest.mark.parametrize(("text", "value"), VALID.items())
def test_kubernetes_quantities_parse_and_pass_the_crd_pattern(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value
    (pattern,) = compute_patterns()
    assert re.search(pattern, text)


@pytest.mark.parametrize("text", INVALID)
def test_what_is_no_quantity_fails_both(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        parse_quantity(text)
    (pattern,) = compute_patterns()
    assert not re.search(pattern, text)


@pytest.mark.parametrize(
    ("value", "quantity"),
    [("2", "2"), ("2+", "2"), (0.5, "0.5"), (".5", "0.5"), ("2.50", "2.5"), ("500m", "500m"), (4, "4")],
)
def test_skypilot_cpus(value: object, quantity: str) -> None:
    assert parse_cpus(value) == quantity


@pytest.mark.parametrize("value", ["500m+", "0", "-1", "lots", "4 +", True, "2++"])
def test_skypilot_cpus_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="is not a cpu count"):
        parse_cpus(value)


@pytest.mark.parametrize(
    ("value", "quantity"),
    [("4", "4Gi"), ("16+", "16Gi"), (16, "16Gi"), ("1.5", "1536Mi"), (".5", "512Mi"), ("8GB", "8G"),
     ("512MB", "512M"), ("1.5TB", "1500000M"), ("4Gi+", "4Gi"), ("2Ki", "2Ki")],
)  # fmt: skip
def test_skypilot_memory(value: object, quantity: str) -> None:
    assert parse_memory(value) == quantity


@pytest.mark.parametrize(
    ("value", "message"),
    [("4XB", "is not a memory size: use GiB"), ("4k", "is not a memory size"), ("1Pi", "is not a memory size"),
     ("4e9", "is not a memory size"), ("4++", "is not a memory size"), ("0", "must be more than 0"),
     ("1.5Mi", "fractions only of G, T, Gi or Ti")],
)  # fmt: skip
def test_skypilot_memory_rejected(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_memory(value)
