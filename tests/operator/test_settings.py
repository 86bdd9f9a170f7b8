"""The operator's environment (trainop.settings): defaults, empty-means-unset, and errors naming the variable."""

from __future__ import annotations

import pytest

from trainop.settings import SettingsError, from_env

BASE = {"WATCH_NAMESPACE": "ml", "PLATFORM_IMAGE": "platform:1", "CHECKPOINT_CLAIM": "ckpt"}


def test_defaults_and_empty_variables_count_as_unset() -> None:
    settings = from_env({**BASE, "CHECKPOINT_SUB_PATH": "", "RECONCILE_INTERVAL_S": "", "MLFLOW_TRACKING_URI": ""})
    assert (settings.interval_s, settings.restart_backoff_s, settings.finished_follow_s) == (5.0, 10.0, 60.0)
    assert (settings.health_port, settings.metrics_port, settings.listen_host) == (8080, 9090, "0.0.0.0")
    assert settings.platform.checkpoint_sub_path is None and settings.platform.tracking_uri == ""
    assert settings.platform.image_pull_policy == "IfNotPresent" and settings.platform.service_account_name == "default"
    assert settings.platform.checkpoint_access_mode == "ReadWriteOnce"
    assert settings.gpus_available is False and settings.trainer_pod_annotations == ()


def test_values_are_read_and_converted() -> None:
    env = {"RECONCILE_INTERVAL_S": "0.5", "HEALTH_PORT": "18080", "GPUS_AVAILABLE": "TRUE", "LISTEN_HOST": "::1",
           "CHECKPOINT_ACCESS_MODE": "ReadWriteMany", "CHECKPOINT_SUB_PATH": "runs"}  # fmt: skip
    settings = from_env({**BASE, **env})
    assert settings.interval_s == 0.5 and settings.health_port == 18080 and settings.gpus_available is True
    assert settings.platform.checkpoint_access_mode == "ReadWriteMany"
    assert settings.platform.checkpoint_sub_path == "runs" and settings.listen_host == "::1"
    assert settings.platform.namespace == "ml" and settings.platform.image == "platform:1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RECONCILE_INTERVAL_S": "0"}, "RECONCILE_INTERVAL_S='0': must be a number > 0"),
        ({"RESTART_BACKOFF_S": "soon"}, "RESTART_BACKOFF_S='soon': must be a number > 0"),
        ({"FINISHED_FOLLOW_S": "-5"}, "FINISHED_FOLLOW_S='-5': must be a number > 0"),
        ({"METRICS_PORT": "-1"}, "METRICS_PORT='-1': must be a number > 0"),
        ({"HEALTH_PORT": "80.5"}, "HEALTH_PORT='80.5': must be an integer > 0"),
        ({"GPUS_AVAILABLE": "1"}, "GPUS_AVAILABLE='1': true or false"),
        ({"CHECKPOINT_ACCESS_MODE": "RWX"}, "CHECKPOINT_ACCESS_MODE='RWX': one of ReadWriteOnce, ReadWriteMany"),
        ({"PLATFORM_IMAGE": ""}, "PLATFORM_IMAGE is required"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({**BASE, **env})
    assert message in str(caught.value)
