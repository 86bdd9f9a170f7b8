"""Names that cross a process boundary, defined once for every side to import: the MLflow run tags the trainer
writes and the operator reads, and the port the trainer serves its metrics on (the pod builders declare it, the
scrapers and NetworkPolicies allow it, the trainer binds it when train.yaml says nothing).

The operator's own settings (its environment variables, ports and labels) are in workloads/trainingjob.py, beside the
resource they belong to; the task launcher's in workloads/task.py."""

from __future__ import annotations

GROUP = "ml-platform.dev"
"""API group of the platform's custom resources, and the prefix of its labels and tags."""

# MLflow run tags. The trainer puts the first on its run from train.yaml's tracking.tags (the operator gives the
# TrainingJob's uid); it adds the checkpoint tags at every checkpoint and the version tag when it registers a model.
UID_TAG = f"{GROUP}/trainingjob-uid"
CHECKPOINT_PATH_TAG = "ml-platform.checkpoint.path"
CHECKPOINT_STEP_TAG = "ml-platform.checkpoint.step"
MODEL_VERSION_TAG = "registered_model_version"

# MLflow model version tag, for tests only: set by end-to-end tests (of canary decisions) on a version they register,
# honoured by the inference server only when its INFERENCE_TEST_FAULTS=allow (inference/faults.py says the values).
TEST_FAULT_TAG = f"{GROUP}/test-fault"

TRAINER_METRICS_PORT = 9400
"""The trainer's Prometheus port (local rank i serves TRAINER_METRICS_PORT + i)."""
MASTER_PORT = 29500
"""Rank 0's rendezvous port in the runs the operator and the launcher create (torch's usual default)."""

# MLflow model version tags the canary gate (rollout/) writes on a challenger version when it decides, before it moves
# any alias (the decision tag last of the three): a version that has it is never decided again. Values of the
# decision: `promoted`, `rolled_back`.
CANARY_DECISION_TAG = f"{GROUP}/canary-decision"
CANARY_REASON_TAG = f"{GROUP}/canary-reason"
CANARY_DECIDED_AT_TAG = f"{GROUP}/canary-decided-at"
