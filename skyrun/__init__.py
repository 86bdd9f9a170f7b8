"""The task launcher: SkyPilot-style task YAMLs run as Indexed Jobs on the platform's cluster, through an
authenticated REST API (`skyrun.app`) and a CLI (`skyrun.cli`); docs/launcher.md."""
