"""The real Pulumi engine for the engine tier: the pulumi CLI, the Python language host and the kubernetes provider,
driven through the Automation API against the local control plane (tests/engine/cluster.py).

Which engine runs:
1. the one tests/engine/toolchain.sh built (CLI and language host v3.259.0, pulumi-resource-kubernetes 4.32.0),
   when its directory has all three: the provider is installed as a plugin into a PULUMI_HOME of the test
   session, automatic plugin downloads are off, nothing of the machine's own Pulumi setup is read;
2. else the `pulumi` on PATH (a user's installation, with its own plugins and plugin downloads);
3. else the tier fails and says how to get one.
`describe()` says which, and the test session prints it in its header.

Every stack runs in a copy of the project (Pulumi.yaml, the stack files, infra/ with its requirements.txt, policy/), so
config set by a test never touches the checkout. The language host creates the copy's virtualenv
(`.venv-pulumi`, from infra/requirements.txt) on the first run, exactly as `pulumi up` does for a user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pulumi import automation as auto

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.gpu.yaml")
PROJECT_DIRS = ("infra", "workloads", "policy")  # infra imports workloads (its pure manifest builders)
ENGINE_TOOLS = ("pulumi", "pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-kubernetes")
# The provider the Python SDK pin (infra/requirements.txt) asks for; toolchain.sh builds this version.
KUBERNETES_PROVIDER_VERSION = "4.32.0"
PASSPHRASE = "engine-tier-test-passphrase"


class EngineMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Engine:
    """A pulumi CLI and the environment every command of the tier runs with."""

    command: auto.PulumiCommand
    env: dict[str, str]
    home: Path
    source: str

    def describe(self) -> str:
        return f"pulumi {self.command.version} ({self.source})"

    def workspace_options(self, kubeconfig: Path) -> auto.LocalWorkspaceOptions:
        return auto.LocalWorkspaceOptions(
            pulumi_command=self.command,
            pulumi_home=str(self.home),
            env_vars={**self.env, "KUBECONFIG": str(kubeconfig)},
        )


def _toolchain_complete(toolchain: Path | None) -> bool:
    return toolchain is not None and all((toolchain / tool).is_file() for tool in ENGINE_TOOLS)


def which_engine(toolchain: Path | None) -> str:
    """What `find_engine` would use, without starting anything (for the test session's header)."""
    if _toolchain_complete(toolchain):
        return f"pulumi from the toolchain {toolchain}"
    found = shutil.which("pulumi")
    if found:
        return f"pulumi on PATH ({found}); the toolchain has no complete Pulumi engine"
    return "none: the toolchain has no Pulumi engine and no pulumi is on PATH"


def find_engine(toolchain: Path | None, home: Path) -> Engine:
    home.mkdir(parents=True, exist_ok=True)
    state = home / "state"
    state.mkdir(exist_ok=True)
    env = {
        "PULUMI_BACKEND_URL": state.as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_SKIP_CONFIRMATIONS": "true",
    }
    if toolchain is not None and _toolchain_complete(toolchain):
        # bin/ holds the CLI and the language host, not the provider: a provider binary on PATH would win over
        # the installed plugin (and over the version the SDK asks for).
        bin_dir = home / "cli" / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for tool in ENGINE_TOOLS[:3]:
            link = bin_dir / tool
            if not link.exists():
                link.symlink_to(toolchain / tool)
        env |= {
            "PULUMI_HOME": str(home),
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        run_env = {**os.environ, **env}
        subprocess.run(
            [str(bin_dir / "pulumi"), "plugin", "install", "resource", "kubernetes", KUBERNETES_PROVIDER_VERSION,
             "--file", str(toolchain / "pulumi-resource-kubernetes")],
            env=run_env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        command = auto.PulumiCommand(root=str(home / "cli"))
        return Engine(command, env, home, f"built by tests/engine/toolchain.sh in {toolchain}")
    found = shutil.which("pulumi")
    if found is None:
        raise EngineMissing(
            "the engine tier needs the Pulumi engine: on this project's CI machine tests/engine/toolchain.sh builds "
            "it from Go modules and ../shared/vendor/pulumi-engine (`make toolchain`); elsewhere install the pulumi "
            f"CLI (https://www.pulumi.com/docs/install/) so that `pulumi` is on PATH, with the kubernetes provider "
            f"plugin {KUBERNETES_PROVIDER_VERSION} or plugin downloads allowed"
        )
    command = auto.PulumiCommand(root=str(Path(found).resolve().parent.parent))
    return Engine(command, env, Path(os.environ.get("PULUMI_HOME", Path.home() / ".pulumi")), f"on PATH: {found}")


def copy_project(dest: Path) -> Path:
    """The project as `pulumi up` sees it, in `dest` (created)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "venv", ".venv*", "*.pyc")
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore, dirs_exist_ok=True)
    return dest


def install_policy_pack(engine: Engine, project: Path) -> None:
    """`pulumi install` in the pack's directory, as docs/security.md tells users: the CLI runs a local Python pack
    in its virtualenv (PulumiPolicy.yaml `virtualenv: venv`) but does not create it, and without it the preview
    fails at "Loading policy packs" with a connection error."""
    subprocess.run(
        [engine.command.command, "install"], cwd=project / "policy", env={**os.environ, **engine.env},
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip


def stack(
    engine: Engine, project: Path, name: str, kubeconfig: Path, config: Mapping[str, str], secrets: Mapping[str, str]
) -> auto.Stack:
    """Create (or select) stack `name` of the project copy and set config keys (on top of Pulumi.<name>.yaml)."""
    s = auto.create_or_select_stack(stack_name=name, work_dir=str(project), opts=engine.workspace_options(kubeconfig))
    values = {key: auto.ConfigValue(value) for key, value in config.items()}
    values |= {key: auto.ConfigValue(value, secret=True) for key, value in secrets.items()}
    s.set_all_config(values)
    return s
