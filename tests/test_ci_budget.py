"""bench/ci_budget.py's report, on a run directory written here: phases come from the phase record, the setup
ends where pytest starts, tiers are summed from pytest's junit report by test directory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_ci_budget():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("ci_budget", ROOT / "bench" / "ci_budget.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(run_dir: Path) -> None:
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "mode": "cold", "commit": "0123456789abcdef", "machine_caches": False, "caches": {}, "machine": "2 cores",
        "start": 1000.0, "end": 1000.0 + 3600.0, "rc": 0,
    }))  # fmt: skip
    (run_dir / "log.txt").write_text(
        "      0.0 Python 3.11.7\n"
        "    900.0 ============================= test session starts ==============================\n"
        "   3599.0 ====== 3 passed, 1 failed, 1 skipped in 2699.00s (0:44:59) ======\n"
    )
    (run_dir / "phases.txt").write_text(
        "virtualenvs (make install: .venv, .venv-checkov) 1001.00 1181.00\n"
        "go build: kube-apiserver kubelet 1010.5 1610.5\n"
        "image import into containerd: localhost/ml-platform-image 1950.0 2100.0\n"
    )
    (run_dir / "junit.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.cluster.test_e2e" name="test_a" time="1200.0"/>'
        '<testcase classname="tests.cluster.test_e2e" name="test_b" time="300.0"><failure message="x"/></testcase>'
        '<testcase classname="tests.infra.test_config" name="test_c" time="10.5"/>'
        '<testcase classname="tests.test_demo" name="test_d" time="60.0"/>'
        '<testcase classname="tests.infra.test_config" name="test_e" time="0.0"><skipped message="s"/></testcase>'
        "</testsuite></testsuites>"
    )


def test_report_sums_phases_setup_and_tiers(tmp_path: Path) -> None:
    ci_budget = load_ci_budget()
    run_dir = tmp_path / "run"
    write_run(run_dir)
    summary = ci_budget.summarize(run_dir)
    assert summary["total"] == 3600.0
    assert summary["setup"] == 900.0
    assert summary["pytest"] == 2700.0
    assert dict(summary["rows"]) == {
        "virtualenvs (make install: .venv, .venv-checkov)": 180.0,
        "go build: kube-apiserver kubelet": 600.0,
        "image import into containerd: localhost/ml-platform-image (during pytest)": 150.0,
    }
    assert summary["tiers"] == {
        "tests/cluster": (1500.0, 2, 1),
        "tests/ (top level)": (60.0, 1, 0),
        "tests/infra": (10.5, 1, 0),
    }
    assert "3 passed, 1 failed" in summary["summary"]
    text = ci_budget.render([run_dir])
    assert "| go build: kube-apiserver kubelet | 600 s (10.0 min) |" in text
    assert "tests/cluster (2 tests, 1 failed)" in text
    assert "**1 h" not in text and "3,600 s (60.0 min)" in text


def test_report_write_replaces_only_its_section(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ci_budget = load_ci_budget()
    run_dir = tmp_path / "run"
    write_run(run_dir)
    doc = tmp_path / "benchmarks.md"
    stale = f"{ci_budget.SECTION}\nSTALE-FIGURES\n{ci_budget.SECTION_END}"
    doc.write_text(f"# Benchmarks\n\n## Infra\nkept\n\n{stale}\n\n## After\nkept too\n")
    monkeypatch.setattr(ci_budget, "DOC", doc)
    ci_budget.main(["report", str(run_dir), "--write"])
    text = doc.read_text()
    assert "STALE-FIGURES" not in text and "## Infra\nkept" in text and "## After\nkept too" in text
    assert text.count(ci_budget.SECTION) == 1 and "3,600 s (60.0 min)" in text
