"""How a rank computes (precision, TF32, compile: chosen without a GPU) and what it exports to Prometheus."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.wait import eventually
from tests.trainer.conftest import REPO, clean_env, tiny_config
from trainer.accel import choose_acceleration
from trainer.config import ConfigError, TrainConfig, build_config
from trainer.metrics import PHASES, TrainerMetrics, metrics_port
from trainer.stopping import StopRequest, StopVote

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_cpu_defaults_are_fp32_and_eager_so_runs_stay_bitwise_reproducible() -> None:
    accel = choose_acceleration(TrainConfig(), CPU)
    assert (accel.autocast_dtype, accel.tf32, accel.compile) == (None, False, False)


def test_gpu_defaults_are_bf16_autocast_tf32_and_compile() -> None:
    accel = choose_acceleration(TrainConfig(), CUDA, bf16_supported=True)
    assert (accel.autocast_dtype, accel.tf32, accel.compile) == (torch.bfloat16, True, True)


def test_a_gpu_without_bf16_trains_in_fp32_with_tf32_unless_bf16_is_demanded() -> None:
    accel = choose_acceleration(TrainConfig(), CUDA, bf16_supported=False)
    assert (accel.autocast_dtype, accel.tf32) == (None, True)
    with pytest.raises(ConfigError, match=r"train.precision='bf16'.*compute capability 8.0"):
        choose_acceleration(TrainConfig(precision="bf16"), CUDA, bf16_supported=False)


def test_explicit_settings_win() -> None:
    fp32 = choose_acceleration(TrainConfig(precision="fp32", compile="off"), CUDA, bf16_supported=True)
    assert (fp32.autocast_dtype, fp32.tf32, fp32.compile) == (None, False, False)
    cpu = choose_acceleration(TrainConfig(precision="bf16", compile="on"), CPU)
    assert (cpu.autocast_dtype, cpu.tf32, cpu.compile) == (torch.bfloat16, False, True)


def test_the_autocast_region_computes_in_the_chosen_dtype() -> None:
    accel = choose_acceleration(TrainConfig(precision="bf16"), CPU)
    with accel.autocast(CPU):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with choose_acceleration(TrainConfig(), CPU).autocast(CPU):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.precision=fp16", r"train.precision='fp16': allowed: auto, fp32, bf16"),
        ("train.compile=yes", r"train.compile='yes': allowed: auto, on, off"),
        ("metrics.port=70000", r"metrics.port=70000: must be in \[0, 65535\]"),
        ("metrics.host=", r"metrics.host='': an address to bind"),
    ],
)
def test_bad_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({}, [override], environ={})


def test_each_rank_on_a_machine_gets_its_own_port() -> None:
    assert [metrics_port(9400, rank, 2) for rank in range(4)] == [9400, 9401, 9400, 9401]
    assert metrics_port(9400, 3, 1) == 9400  # one rank per pod: every pod on the same port
    assert metrics_port(0, 1, 2) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        f"{sample.name}{dict(sorted(sample.labels.items()))}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_endpoint_serves_every_family_over_http(tmp_path: Path) -> None:
    metrics = TrainerMetrics(rank=1)
    url = metrics.serve("127.0.0.1", _free_port())
    assert url is not None
    try:
        metrics.started(max_steps=100, world_size=2, resumed_from_step=40)
        metrics.step_done(41, 0.05, dict.fromkeys(PHASES, 0.01))
        metrics.logged(train_loss=float("nan"), tokens_per_s=1234.0)
        metrics.evaluated(2.5)
        (tmp_path / "model.pt").write_bytes(b"x" * 1000)
        metrics.checkpoint_saved(tmp_path, 0.2)
        samples = _scrape(url)
    finally:
        metrics.close()
    rank = "{'rank': '1'}"
    assert samples[f"trainer_step{rank}"] == 41
    assert samples[f"trainer_max_steps{rank}"] == 100
    assert samples[f"trainer_resumed_from_step{rank}"] == 40
    assert samples[f"trainer_steps_total{rank}"] == 1
    assert samples[f"trainer_train_loss{rank}"] != samples[f"trainer_train_loss{rank}"]  # NaN goes out as NaN
    assert samples[f"trainer_val_loss{rank}"] == 2.5
    assert samples[f"trainer_checkpoint_size_bytes{rank}"] == 1000
    assert samples[f"trainer_checkpoint_save_duration_seconds_count{rank}"] == 1
    assert samples["trainer_step_phase_seconds_total{'phase': 'data', 'rank': '1'}"] == pytest.approx(0.01)
    assert abs(samples[f"trainer_last_step_timestamp_seconds{rank}"] - time.time()) < 60
    assert "process_resident_memory_bytes{}" in samples


def test_a_busy_port_is_reported_and_training_goes_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        report = io.StringIO()
        assert TrainerMetrics(rank=0).serve("127.0.0.1", port, stream=report) is None
    assert f"127.0.0.1:{port} not started" in report.getvalue()
    assert "metrics.port" in report.getvalue()


def test_one_process_decides_the_stop_on_its_own() -> None:
    stop = StopRequest()
    vote = StopVote(stop, distributed=False)
    assert not vote.decided()
    stop.signum = 15
    vote.cast()
    assert vote.decided()


@pytest.mark.slow
def test_a_real_run_exports_its_progress_while_it_trains(tmp_path: Path) -> None:
    port = _free_port()
    config = tiny_config(tmp_path, train={"max_steps": 100_000, "log_every": 5}, checkpoint={"every": 0})
    trainer = subprocess.Popen(
        [sys.executable, "-m", "trainer", "train", "--config", str(config), f"--set=metrics.port={port}"],
        env=clean_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        scraped: list[dict[str, float]] = [{}]

        def past_step_20() -> dict[str, float] | None:
            assert trainer.poll() is None, trainer.communicate()[1]
            scraped[0] = _scrape(url)  # not listening yet: an OSError, tried again
            return scraped[0] if scraped[0].get("trainer_step{'rank': '0'}", 0) >= 20 else None

        try:
            samples = eventually("rank 0 past step 20 on its /metrics", past_step_20, 120, 0.5, retry_on=(OSError,))
        except TimeoutError as err:
            raise AssertionError(f"{err}; last scrape: {scraped[0]}") from None
        assert samples["trainer_max_steps{'rank': '0'}"] == 100_000
        assert samples["trainer_tokens_per_second{'rank': '0'}"] > 0
        assert 0 < samples["trainer_train_loss{'rank': '0'}"] < 10
        assert samples["trainer_step_duration_seconds_count{'rank': '0'}"] >= 20
        phases = [samples[f"trainer_step_phase_seconds_total{{'phase': '{p}', 'rank': '0'}}"] for p in PHASES]
        assert all(spent > 0 for spent in phases)
    finally:
        trainer.terminate()
        _, stderr = trainer.communicate(timeout=60)
    assert f"rank 0: metrics at {url}" in stderr
