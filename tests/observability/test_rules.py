"""The platform's alert rules (workloads/monitoring/rules.py) with the real promtool: the rendered rule file passes
`promtool check rules`, and `promtool test rules` runs rules_test.yaml, where every alert fires on synthetic series
and, in other cases, does not."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from workloads.monitoring.rules import AlertThresholds, alerts, prometheus_rule_spec, rule_file, rule_file_text

pytestmark = pytest.mark.prometheus

HERE = Path(__file__).resolve().parent
UNIT_TESTS = HERE / "rules_test.yaml"
NAMESPACE = "ml-platform"


def unit_tests() -> dict[str, Any]:
    return yaml.safe_load(UNIT_TESTS.read_text())


def with_plain_annotations(tests: dict[str, Any], namespace: str, thresholds: AlertThresholds) -> dict[str, Any]:
    """rules_test.yaml with each expected alert's description and runbook taken from its rule: those are plain
    text (asserted here), so only the templated summary has to be spelled out in the YAML."""
    rules = {a.name: a.rule()["annotations"] for a in alerts(namespace, thresholds)}
    filled = copy.deepcopy(tests)
    for case in filled["tests"]:
        for check in case.get("alert_rule_test", []):
            plain = {k: v for k, v in rules[check["alertname"]].items() if k != "summary"}
            assert not any("{{" in v for v in plain.values()), f"{check['alertname']}: templated {plain}"
            for expected in check["exp_alerts"]:
                expected["exp_annotations"] = {**plain, **expected["exp_annotations"]}
    return filled


def run_promtool_test(promtool: Path, directory: Path, thresholds: AlertThresholds) -> subprocess.CompletedProcess:
    (directory / "ml-platform.rules.yaml").write_text(rule_file_text(NAMESPACE, thresholds))
    tests = with_plain_annotations(unit_tests(), NAMESPACE, thresholds)
    (directory / "rules_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return subprocess.run(
        [str(promtool), "test", "rules", "rules_test.yaml"], cwd=directory, capture_output=True, text=True, timeout=300
    )


def test_rule_file_passes_promtool_check(promtool: Path, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rule_file_text(NAMESPACE))
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(NAMESPACE))} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_rule(promtool: Path, tmp_path: Path) -> None:
    """The check above can fail: an expression that does not parse is refused."""
    broken = rule_file(NAMESPACE)
    broken["groups"][0]["rules"][0]["expr"] = "sum by (namespace (trainer_step)"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


def test_every_alert_fires_and_does_not_fire_in_promtool_unit_tests(promtool: Path, tmp_path: Path) -> None:
    result = run_promtool_test(promtool, tmp_path, AlertThresholds())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_every_alert_both_ways() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in unit_tests()["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a.name for a in alerts(NAMESPACE)}
    assert fires == names, f"no firing case for {names - fires}"
    assert quiet == names, f"no silent case for {names - quiet}"


@pytest.mark.parametrize(
    "thresholds",
    [
        AlertThresholds(training_stall_minutes=25),
        AlertThresholds(inference_p99_seconds=40),
        AlertThresholds(inference_5xx_ratio=0.2),
        AlertThresholds(inference_429_minutes=30),
        AlertThresholds(volume_free_ratio=0.01),
    ],
    ids=["stall", "p99", "5xx", "429-duration", "volume"],
)
def test_thresholds_decide_what_fires(promtool: Path, tmp_path: Path, thresholds: AlertThresholds) -> None:
    """With a threshold the synthetic series do not cross, the unit tests' firing expectations fail: the
    thresholds are in the rules, and the unit tests would notice a rule that ignored them."""
    result = run_promtool_test(promtool, tmp_path, thresholds)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # The expected alert did not come (the annotations follow the thresholds, so nothing else differs).
    assert "FAILED" in output and "got:[]" in output, output


def test_rules_select_only_their_namespace() -> None:
    for alert in alerts("team-a"):
        assert alert.expr.count('namespace="team-a"') >= 1, alert.name
        assert "namespace=" not in alert.expr.replace('namespace="team-a"', ""), alert.name


def test_prometheus_rule_spec_is_the_rule_file() -> None:
    assert prometheus_rule_spec(NAMESPACE) == rule_file(NAMESPACE)
    assert yaml.safe_load(rule_file_text(NAMESPACE)) == rule_file(NAMESPACE)


def crd_schema(path: Path) -> tuple[str, dict[str, Any]]:
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return crd["spec"]["names"]["kind"], version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the schema does not declare: the API server would prune them without a word (structural schemas
    drop unknown fields), so a typo would silently switch a setting off."""
    found = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def test_pod_monitors_and_prometheus_rule_validate_against_the_operator_crds(monitoring_crds: list[Path]) -> None:
    """The gpu stack's PodMonitors and PrometheusRule against the Prometheus Operator's own CRD schemas."""
    import jsonschema

    from tests.infra.conftest import objects_of, render_stack

    schemas = dict(crd_schema(path) for path in monitoring_crds)
    objects = [o for o in objects_of(render_stack("gpu")) if o["apiVersion"] == "monitoring.coreos.com/v1"]
    assert sorted({o["kind"] for o in objects}) == ["PodMonitor", "PrometheusRule"]
    for obj in objects:
        schema = schemas[obj["kind"]]
        body = {k: v for k, v in obj.items() if k != "metadata"}
        # Draft 7 without checking the schema itself: the CRDs' patterns are Go regular expressions.
        jsonschema.Draft7Validator(schema).validate(body)
        assert unknown_fields(body, schema) == [], obj["metadata"]["name"]
    # Both checks can fail: a wrong type, and a misspelt field.
    monitor = next(o for o in objects if o["kind"] == "PodMonitor")
    bad = copy.deepcopy(monitor)
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = 30
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schemas["PodMonitor"]).validate({k: v for k, v in bad.items() if k != "metadata"})
    bad = copy.deepcopy(monitor)
    bad["spec"]["podMetricEndpoints"] = bad["spec"].pop("podMetricsEndpoints")
    assert unknown_fields({"spec": bad["spec"]}, schemas["PodMonitor"]) == [".spec.podMetricEndpoints"]
