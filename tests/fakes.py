"""Fakes shared by several test modules (imported by name: tests/ is on sys.path)."""


class RecordingProbe:
    """A probe_url stand-in: answers True only for ``reachable`` URLs, records every call."""

    def __init__(self, *reachable: str):
        self.reachable = set(reachable)
        self.urls: list[str] = []

    def __call__(self, url: str) -> bool:
        self.urls.append(url)
        return url in self.reachable
