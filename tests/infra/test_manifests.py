"""Rendered manifests: strict validation against the Kubernetes OpenAPI schemas, and the render CLI itself."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import find

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"
# cert-manager's kinds are CRDs: the core OpenAPI schemas do not describe them.
CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def core_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if not o["apiVersion"].startswith(CRD_GROUPS)]


def test_rendered_stack_validates_strictly(stack_objects: list[dict[str, Any]]) -> None:
    errors = []
    for obj in core_objects(stack_objects):
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {err.message}")
    assert errors == []
    assert len(core_objects(stack_objects)) >= 20


def test_validator_rejects_what_it_should(dev_objects: list[dict[str, Any]]) -> None:
    """The strict validation above can fail: an unknown field, a wrong type, a string for an integer."""
    job = copy.deepcopy(find(dev_objects, "Job"))
    job["spec"]["completionz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)
    job = copy.deepcopy(find(dev_objects, "Job"))
    job["spec"]["parallelism"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)
    service = copy.deepcopy(find(dev_objects, "Service", "inference"))
    service["spec"]["ports"][0]["nodePort"] = "30092"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(service)


def test_schema_version_is_current() -> None:
    versions = kubernetes_validate.utils.all_versions()
    assert KUBERNETES_VERSION.rsplit(".", 1)[0] in {v.rsplit(".", 1)[0] for v in versions}


def test_render_cli_writes_multi_document_yaml(tmp_path: Path) -> None:
    out = tmp_path / "gpu.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "infra.render", "gpu", "--out", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.startswith("# Rendered by `python -m infra.render gpu`")
    assert "#   mlplatform:training:TrainingJob training" in text
    docs = list(yaml.safe_load_all(text))
    job = find(docs, "Job")
    assert type(job["spec"]["completions"]) is int
    assert find(docs, "Secret", "postgres")["stringData"]["password"] == "<secret:password>"
    assert next(d["kind"] for d in docs) == "Namespace"


def test_render_cli_reports_unknown_stack_and_bad_config(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "infra.render", "staging"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "Pulumi.staging.yaml" in result.stderr and "dev" in result.stderr
