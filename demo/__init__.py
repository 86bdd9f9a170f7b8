"""The local platform runner behind `make demo`: MLflow, 2-rank DDP training and inference as local processes.

It lives outside `infra` because it needs MLflow's client and the `openai` client, which the Pulumi program's
environment (infra/requirements.txt) does not have.
"""
