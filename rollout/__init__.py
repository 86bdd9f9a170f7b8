"""The canary gate: measures a challenger version against the champion from the inference replicas' metrics and
decides once, in MLflow, whether to promote it or roll it back (docs/rollout.md)."""
