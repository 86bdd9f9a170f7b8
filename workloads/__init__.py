"""Pure Kubernetes manifest builders: typed specs in, plain dicts (camelCase, as the API server takes them) out.

Both the Pulumi program (`infra`) and runtime packages (a TrainingJob operator) build the same objects from here,
so nothing in this package imports pulumi, a Kubernetes client or any runtime package: the standard library and
PyYAML only (tests/test_architecture.py checks it). Each builder is a function of its spec alone; whoever creates
the objects (Pulumi, an operator) adds its own labels and annotations through the spec.
"""
