"""Where models come from: local saved-model and checkpoint directories, or the MLflow model registry.

A *source* answers two questions: which versions are current (cheap, polled: the champion, and for an MLflow alias
the canary's challenger) and where are a version's files (may download). A version is an opaque string: the
registry's version number, or a checkpoint's directory name. What the files are (saved model, checkpoint root,
MLflow model) is `tinygpt.saved`'s business.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from inference.faults import InjectedFault
from inference.settings import MODEL_URI_RE, Settings
from tinygpt import saved
from tinygpt.model import GPT
from tinygpt.saved import SAVED_MODEL_FILES, SavedModelError, find_saved_model, is_saved_model_dir, latest_checkpoint
from tinygpt.tokenizer import CharTokenizer

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

class ModelLoadError(RuntimeError):
    """The model could not be found, fetched or read; the message says which and where."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready to serve, with what it is called and which version it is."""

    name: str
    version: str
    model: GPT
    tokenizer: CharTokenizer
    device: torch.device
    fault: InjectedFault | None = None
    """The test fault its tags ask for, where the server allows test faults (`inference.faults`)."""


@dataclass(frozen=True, slots=True)
class Current:
    """What one poll of a source found."""

    champion: str
    """The version to serve (to everyone but the canary's share)."""
    challenger: str | None = None
    """The version the challenger alias points to; None where it is unset or the source has no canary."""


class ModelSource(Protocol):
    name: str
    """The default id clients use for this model."""
    pollable: bool
    """Whether the current versions can change while the server runs."""

    def current(self) -> Current: ...

    def fetch(self, version: str) -> Path: ...

    def version_tags(self, version: str) -> Mapping[str, str]:
        """The version's tags (registry versions have them; local directories have none)."""
        ...

    def prune(self, keep: Collection[str]) -> None:
        """Delete what `fetch` stored for any version but those in `keep`, the ones now served."""
        ...


class LocalSource:
    """A saved-model or MLflow model directory (never changes), or a checkpoint root (the newest complete step is
    current)."""

    pollable: bool

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pollable = not (is_saved_model_dir(path) or (path / saved.MLMODEL_FILE).is_file())
        self.name = path.resolve().name

    def current(self) -> Current:
        if not self.path.is_dir():
            raise ModelLoadError(f"model path {self.path} does not exist or is not a directory")
        if not self.pollable:
            return Current(self.path.name)
        newest = latest_checkpoint(self.path)
        if newest is None:
            raise ModelLoadError(
                f"{self.path} is neither a saved-model directory ({', '.join(SAVED_MODEL_FILES)}) nor a checkpoint "
                "root with a complete step-* directory"
            )
        return Current(newest.name)

    def fetch(self, version: str) -> Path:
        return self.path if not self.pollable else self.path / version

    def version_tags(self, version: str) -> Mapping[str, str]:
        return {}

    def prune(self, keep: Collection[str]) -> None:
        """Nothing: the files are served in place and belong to the trainer (`checkpoint.keep` prunes them)."""


class MlflowSource:
    """`models:/<name>@<alias>` (the alias is polled, and so is `challenger_alias` of the same model when given)
    or `models:/<name>/<version>` (pinned, never a challenger)."""

    def __init__(self, uri: str, tracking_uri: str, cache_dir: Path, challenger_alias: str | None = None) -> None:
        match = MODEL_URI_RE.match(uri)
        if match is None:
            raise ModelLoadError(f"{uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
        self.name: str = match["name"]
        self.alias: str | None = match["alias"]
        self.pinned_version: str | None = match["version"]
        self.pollable = self.alias is not None
        self.challenger_alias = challenger_alias if self.alias is not None else None
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir

    def _client(self) -> MlflowClient:
        """A client bound to the configured server for tracking *and* the registry.

        MLflow resolves any URI it is not given from process-wide state (MLFLOW_TRACKING_URI,
        MLFLOW_REGISTRY_URI, `mlflow.set_*_uri`), so every call goes through this client, and nothing here
        uses a `models:/` URI, whose registry lookup ignores a `tracking_uri` argument.
        """
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def current(self) -> Current:
        """Both aliases from one read of the registered model, so that a poll sees them as they were at one moment:
        a promotion (the champion alias moved to the challenger's version) is never seen half done."""
        if self.pinned_version is not None:
            return Current(self.pinned_version)
        from mlflow.exceptions import MlflowException

        assert self.alias is not None  # a URI is either pinned or an alias
        where = f"models:/{self.name}@{self.alias} at {self.tracking_uri}"
        try:
            aliases = {str(k): str(v) for k, v in self._client().get_registered_model(self.name).aliases.items()}
        except MlflowException as exc:
            raise ModelLoadError(f"cannot resolve {where}: {exc.message}") from exc
        if self.alias not in aliases:
            held = ", ".join(f"{alias} -> {version}" for alias, version in sorted(aliases.items())) or "none"
            raise ModelLoadError(f"cannot resolve {where}: the model has no alias {self.alias!r} (its aliases: {held})")
        challenger = aliases.get(self.challenger_alias) if self.challenger_alias else None
        return Current(aliases[self.alias], challenger)

    def version_tags(self, version: str) -> Mapping[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self._client().get_model_version(self.name, version).tags)
        except MlflowException as exc:
            raise ModelLoadError(f"cannot read the tags of models:/{self.name}/{version}: {exc.message}") from exc

    def fetch(self, version: str) -> Path:
        """Download the version's artifacts into `cache_dir/<name>/<version>` (reused when already there)."""
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        target = self.cache_dir / self.name / version
        if target.is_dir():  # only ever renamed into place complete
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download into a fresh temporary directory and rename, so a crash never leaves a half-written version
        # that a later start would take for complete.
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            # The version's files live where the registry says (e.g. mlflow-artifacts:/...), which the artifact
            # repository resolves against `tracking_uri`.
            location = self._client().get_model_version_download_uri(self.name, version)
            downloaded = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=location,
                    dst_path=str(staging),
                    tracking_uri=self.tracking_uri,
                    registry_uri=self.tracking_uri,
                )
            )
            try:
                found = find_saved_model(downloaded)
            except SavedModelError as exc:
                raise ModelLoadError(f"models:/{self.name}/{version}: {exc}") from exc
            if found == downloaded:
                log.warning(
                    "models:/%s/%s holds raw saved-model files from before the MLflow pyfunc model: this server "
                    "loads it, but MLflow's tools (mlflow.pyfunc.load_model) cannot; retrain or re-register it",
                    self.name, version,
                )
            shutil.rmtree(target, ignore_errors=True)
            downloaded.rename(target)
        except MlflowException as exc:
            raise ModelLoadError(f"cannot download models:/{self.name}/{version}: {exc.message}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def prune(self, keep: Collection[str]) -> None:
        """Empty `cache_dir/<name>` but for the versions in `keep`: older versions, and staging directories that a
        killed process left behind (the cache outlives container restarts in the pod's emptyDir).

        Called once the versions in `keep` serve, and loads never overlap, so nothing else in the directory is in
        use by this process; the cache directory must not be shared with another server of the same model.
        """
        versions = self.cache_dir / self.name
        if not versions.is_dir():
            return
        for entry in versions.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            log.info("removed %s from the model cache", entry)


def make_source(settings: Settings) -> ModelSource:
    if not settings.model_uri:
        raise ModelLoadError("no model configured: set INFERENCE_MODEL_URI or pass --model-uri")
    if settings.model_uri.startswith("models:"):
        assert settings.tracking_uri is not None  # guaranteed by Settings validation
        return MlflowSource(settings.model_uri, settings.tracking_uri, settings.cache_dir, settings.canary_alias)
    return LocalSource(Path(settings.model_uri))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_directory(directory: Path, name: str, version: str, device: torch.device) -> LoadedModel:
    """Read the saved model in `directory` (or in the MLflow model there) for inference on `device`."""
    try:
        found = saved.load(find_saved_model(directory), map_location=device)
    except SavedModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    found.model.requires_grad_(False)
    return LoadedModel(name=name, version=version, model=found.model, tokenizer=found.tokenizer, device=device)
