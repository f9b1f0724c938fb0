"""Adapter versions and the routes that serve them: register, canary, promote, roll back.

    >>> from helpers.monitor.registry import AdapterRegistry
    >>> reg = AdapterRegistry("outputs/monitor/registry.json")
    >>> reg.register("r1", "outputs/adapter", data_hash="3f2a...", metrics={"json_valid": 0.91})
    >>> reg.register("r2", "outputs/adapter-r2", parent="r1")
    >>> reg.serve("tuned", "r1")  # requests for model "tuned" get r1
    >>> reg.start_canary("tuned", "r2", share=0.2)  # about 20% of clients get r2
    >>> reg.promote("tuned")  # r2 for everyone; reg.rollback("tuned") brings r1 back

The registry is one JSON file, rewritten atomically (a temporary file, then ``os.replace``), so a
server reading it never sees half a file. Every change re-reads the file first, so two objects
(the notebook's and the server's) can share it; the server re-reads it when it changes
(:meth:`refresh`), so promote and rollback take effect at the next request, without a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class AdapterRegistry:
    """Versions (adapter directory, parent, data hash, metrics, created) and routes per alias."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._stamp: tuple | None = None
        self._data: dict[str, Any] = {"versions": {}, "routes": {}}
        self.refresh()

    # --- the file ---------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last read; True when it did."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # os.replace gives a new inode
        if stamp == self._stamp:
            return False
        self._data = json.loads(self.path.read_text(encoding="utf-8"))
        self._stamp = stamp
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self._data, ensure_ascii=False, indent=2)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, self.path)
        self.refresh()

    def _route(self, alias: str) -> dict[str, Any]:
        self.refresh()
        route = self._data["routes"].get(alias)
        if route is None:
            raise KeyError(f"No route {alias!r}; start one with serve({alias!r}, version).")
        return route

    def _check_version(self, version: str) -> None:
        if version not in self._data["versions"]:
            known = ", ".join(self._data["versions"]) or "none yet"
            raise KeyError(f"Unknown version {version!r} (registered: {known}); register() it.")

    # --- versions ---------------------------------------------------------------------------

    def register(
        self,
        version: str,
        adapter_dir: str | Path,
        *,
        parent: str | None = None,
        data_hash: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Add a version (names are never reused: a changed adapter is a new version)."""
        self.refresh()
        if version in self._data["versions"]:
            raise ValueError(f"Version {version!r} is registered already; pick a new name.")
        if version in self._data["routes"]:
            raise ValueError(f"{version!r} is a route's name; versions and routes need their own.")
        if parent is not None:
            self._check_version(parent)
        entry = {
            "adapter_dir": str(Path(adapter_dir).expanduser().resolve()),
            "parent": parent,
            "data_hash": data_hash,
            "metrics": dict(metrics or {}),
            "created": time.time(),
        }
        self._data["versions"][version] = entry
        self._save()
        return {"version": version, **entry}

    def adapter_dir(self, version: str) -> Path:
        """Where ``version``'s adapter is."""
        self.refresh()
        self._check_version(version)
        return Path(self._data["versions"][version]["adapter_dir"])

    def versions(self) -> list[dict[str, Any]]:
        """Every version as a dict (``pd.DataFrame(reg.versions())`` shows them)."""
        self.refresh()
        return [{"version": v, **entry} for v, entry in self._data["versions"].items()]

    # --- routes -----------------------------------------------------------------------------

    def serve(self, alias: str, version: str) -> None:
        """Route every request for ``alias`` to ``version`` (ends a running canary)."""
        self.refresh()
        self._check_version(version)
        if alias in self._data["versions"]:
            raise ValueError(f"{alias!r} is a version's name; pick another route name.")
        route = self._data["routes"].get(alias)
        history = [*route["history"], route["stable"]] if route else []
        self._data["routes"][alias] = {
            "stable": version,
            "canary": None,
            "share": 0.0,
            "history": history,
        }
        self._save()

    def start_canary(self, alias: str, version: str, share: float) -> None:
        """Send a ``share`` (0 < share < 1) of the keys asking for ``alias`` to ``version``."""
        route = self._route(alias)
        self._check_version(version)
        if not 0.0 < share < 1.0:
            raise ValueError(f"share must be between 0 and 1 (exclusive), got {share}.")
        if version == route["stable"]:
            raise ValueError(f"{version!r} is already {alias!r}'s stable version.")
        route.update(canary=version, share=float(share))
        self._save()

    def promote(self, alias: str) -> str:
        """Make the canary the stable version for everyone; returns it."""
        route = self._route(alias)
        if route["canary"] is None:
            raise ValueError(f"{alias!r} has no canary to promote; start_canary() first.")
        route["history"].append(route["stable"])
        route.update(stable=route["canary"], canary=None, share=0.0)
        self._save()
        return route["stable"]

    def rollback(self, alias: str) -> str:
        """Stop a running canary, or else go back to the previous stable version; returns it."""
        route = self._route(alias)
        if route["canary"] is not None:
            route.update(canary=None, share=0.0)
        elif route["history"]:
            route["stable"] = route["history"].pop()
        else:
            raise ValueError(f"{alias!r} has no earlier version to roll back to.")
        self._save()
        return route["stable"]

    def routes(self) -> dict[str, dict[str, Any]]:
        """``{alias: {"stable", "canary", "share", "history"}}``."""
        self.refresh()
        return {alias: dict(route) for alias, route in self._data["routes"].items()}

    def resolve(self, alias: str, key: str) -> str:
        """The version serving ``key`` (a client id) for ``alias``; the same key, the same version.

        The key's hash places it in [0, 1); below the canary's share means the canary.
        """
        route = self._route(alias)
        if route["canary"] is None:
            return route["stable"]
        digest = hashlib.sha256(f"{alias}\0{key}".encode()).digest()
        position = int.from_bytes(digest[:8], "big") / 2**64
        return route["canary"] if position < route["share"] else route["stable"]

    def lookup(self, name: str, key: str) -> str | None:
        """The version serving model ``name``: a route resolved, a version itself, else None."""
        self.refresh()
        if name in self._data["routes"]:
            return self.resolve(name, key)
        return name if name in self._data["versions"] else None

    def __repr__(self) -> str:
        self.refresh()
        return (
            f"AdapterRegistry({str(self.path)!r}, versions={list(self._data['versions'])}, "
            f"routes={ {a: r['stable'] for a, r in self._data['routes'].items()} })"
        )


class LoadedVersions:
    """The versions a server has loaded: ``load_version(version, adapter_dir)`` runs once each.

    ``wrap(version, backend)`` builds what the server keeps per version (its admission slot);
    versions load one at a time (two models loading at once could run out of memory).
    """

    def __init__(
        self,
        registry: AdapterRegistry,
        load_version: Callable[[str, Path], Any],
        wrap: Callable[[str, Any], Any],
    ):
        self.registry, self.load_version, self.wrap = registry, load_version, wrap
        self.served: dict[str, Any] = {}  # version -> what wrap returned
        self._backends: list[Any] = []
        self._lock = threading.Lock()

    def get(self, version: str) -> Any:
        """What serves ``version``, loading it first if need be (blocking: call in a thread)."""
        with self._lock:
            if version not in self.served:
                backend = self.load_version(version, self.registry.adapter_dir(version))
                self._backends.append(backend)
                self.served[version] = self.wrap(version, backend)
            return self.served[version]

    def models(self, created: int) -> list[dict[str, Any]]:
        """OpenAI ``/v1/models`` entries: the routes (with stable, canary, share), the versions."""
        entry = {"object": "model", "owned_by": "course"}
        routes = [
            {"id": alias, **entry, "created": created, **route}
            for alias, route in self.registry.routes().items()
        ]
        versions = [
            {"id": v["version"], **entry, "created": int(v["created"]), "parent": v["parent"]}
            for v in self.registry.versions()
        ]
        return routes + versions

    def close(self) -> None:
        """Free every loaded backend that has a ``close()``."""
        with self._lock:
            for backend in self._backends:
                getattr(backend, "close", lambda: None)()
            self._backends, self.served = [], {}
