"""Engine tier: the platform against a real local Kubernetes control plane (see docs/engine.md)."""
