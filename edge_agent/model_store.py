"""The models installed on the device, and which one is active, kept on disk across restarts.

Layout under `root`:

    models/{version_id}/{sha256}.{format}   the model bytes
    models/{version_id}/ref.json            its ModelRef, written last: marks a complete install
    state.json                              {"active": id | null, "previous": id | null}

Every file is written to a temporary file, fsynced and renamed into place (then the directory is
fsynced), so a power cut leaves either the old or the new file, never a torn one. The model file is
named by its digest: re-installing a version with different bytes never overwrites the file the
current ref.json points to. Verification (signature) is the caller's job; `install` only refuses
bytes whose sha256 is not the ref's.

The same bytes published as another version (a re-deployment, a retagged build) are found by
digest (`find_sha256`) and installed from the file already held (`install_file`: a hard link, or a
copy where links are not possible), so the device transfers nothing for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.core.fs import fsync_dir, write_atomic
from edge_agent.core.wire import ModelRef, WireError

__all__ = ["InstalledModel", "ModelStore"]

log = logging.getLogger(__name__)

_REF = "ref.json"
_STATE = "state.json"


@dataclass(frozen=True)
class InstalledModel:
    ref: ModelRef
    path: Path

    @property
    def version_id(self) -> int:
        return self.ref.version_id


class ModelStore:
    def __init__(self, root: Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self._models = self.root / "models"
        self._models.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- models ---------------------------------------------------------------------------------
    def _dir(self, version_id: int) -> Path:
        return self._models / str(version_id)

    def install(self, ref: ModelRef, data: bytes) -> InstalledModel:
        """Write `data` as version `ref.version_id`; a no-op when those exact bytes are installed.

        Raises ValueError when sha256(data) is not `ref.sha256` (verify before installing).
        """
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256.lower():
            raise ValueError(
                f"refusing to install version {ref.version_id}: sha256 of the data is {digest}, "
                f"the ref says {ref.sha256}"
            )
        with self._lock:
            directory = self._dir(ref.version_id)
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{digest}.{ref.format}"
            if not (path.is_file() and _sha256_file(path) == digest):
                write_atomic(path, data)
            ref_path = directory / _REF
            current = _read_ref(ref_path)
            if current is None or current.model_dump(exclude={"v"}) != ref.model_dump(
                exclude={"v"}
            ):
                write_atomic(ref_path, ref.dumps())
            for stale in directory.iterdir():  # files of an earlier install, temporaries
                if stale.name not in (path.name, _REF):
                    _remove(stale)
            return InstalledModel(ref=ref, path=path)

    def install_file(self, ref: ModelRef, source: Path) -> InstalledModel:
        """Install version `ref.version_id` from a file already on the device (another version's
        model file with the same bytes): hard-linked, or copied where the filesystem cannot link.

        The linked file is hashed again before ref.json is written; raises ValueError when its
        sha256 is not `ref.sha256`, OSError when it cannot be linked nor copied.
        """
        digest = ref.sha256.lower()
        with self._lock:
            directory = self._dir(ref.version_id)
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{digest}.{ref.format}"
            if not (path.is_file() and _sha256_file(path) == digest):
                _link_or_copy(Path(source), path)
            actual = _sha256_file(path)
            if actual != digest:
                _remove(path)
                raise ValueError(
                    f"refusing to install version {ref.version_id} from {Path(source).name}: its "
                    f"sha256 is {actual}, the ref says {ref.sha256}"
                )
            write_atomic(directory / _REF, ref.dumps())
            for stale in directory.iterdir():
                if stale.name not in (path.name, _REF):
                    _remove(stale)
            return InstalledModel(ref=ref, path=path)

    def find_sha256(self, sha256: str, *, exclude: int | None = None) -> InstalledModel | None:
        """An installed version (not `exclude`) whose model file has digest `sha256`, newest
        first; None when no installed version holds those bytes."""
        wanted = sha256.lower()
        for model in self.installed():
            if model.version_id != exclude and model.ref.sha256.lower() == wanted:
                return model
        return None

    def get(self, version_id: int) -> InstalledModel | None:
        """The installed version, or None if it is not (completely) installed."""
        ref = _read_ref(self._dir(version_id) / _REF)
        if ref is None or ref.version_id != version_id:
            return None
        path = self._dir(version_id) / f"{ref.sha256.lower()}.{ref.format}"
        if not path.is_file():
            return None
        return InstalledModel(ref=ref, path=path)

    def installed(self) -> list[InstalledModel]:
        """Every installed version, newest (highest version id) first."""
        found = []
        for entry in self._models.iterdir():
            if entry.is_dir() and entry.name.isdigit():
                model = self.get(int(entry.name))
                if model is not None:
                    found.append(model)
        return sorted(found, key=lambda m: m.ref.version_id, reverse=True)

    def prune(self, protect: Iterable[int] = ()) -> list[int]:
        """Delete all but the newest `keep` versions, never the active or previous one, nor
        those in `protect` (a shadow).

        Returns the removed version ids (ascending). Incomplete installs are removed too.
        """
        with self._lock:
            state = self._read_state()
            protected: set[int | None] = {state["active"], state["previous"], *protect}
            kept = {m.version_id for m in self.installed()[: self.keep]}
            removed = []
            for entry in sorted(self._models.iterdir(), key=lambda p: p.name):
                if not (entry.is_dir() and entry.name.isdigit()):
                    _remove(entry)
                    continue
                version_id = int(entry.name)
                if version_id in kept or version_id in protected:
                    continue
                _remove(entry)
                removed.append(version_id)
            if removed:
                fsync_dir(self._models)
            return sorted(removed)

    # -- active pointer -------------------------------------------------------------------------
    def set_active(self, version_id: int | None, previous: int | None) -> None:
        """Persist which version is active and which one a rollback returns to."""
        if version_id is not None and self.get(version_id) is None:
            raise ValueError(f"version {version_id} is not installed")
        state = {"active": version_id, "previous": previous}
        with self._lock:
            write_atomic(self.root / _STATE, json.dumps(state).encode())

    def active_id(self) -> int | None:
        return self._read_state()["active"]

    def previous_id(self) -> int | None:
        return self._read_state()["previous"]

    def _read_state(self) -> dict[str, int | None]:
        path = self.root / _STATE
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {"active": None, "previous": None}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return {"active": None, "previous": None}
        state: dict[str, int | None] = {"active": None, "previous": None}
        if isinstance(raw, dict):
            for key in state:
                value = raw.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    state[key] = value
        return state


def _read_ref(path: Path) -> ModelRef | None:
    try:
        payload = path.read_bytes()
    except OSError:
        return None
    try:
        ref: ModelRef = ModelRef.loads(payload)
    except WireError as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None
    return ref


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _link_or_copy(source: Path, path: Path) -> None:
    """Place `source`'s bytes at `path` atomically: a hard link (no bytes written; the store never
    rewrites a model file in place, so the two names cannot diverge), else a copy."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(source, tmp)
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
