"""ml-platform's Pulumi policy pack (`pulumi preview --policy-pack policy`); rules in `policies.py`."""
