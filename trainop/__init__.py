"""The TrainingJob operator (Kopf): `python -m trainop` reconciles TrainingJobs (ml-platform.dev/v1alpha1) of one
namespace into the training run objects of workloads.training. See docs/operator.md."""
