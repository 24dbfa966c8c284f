"""The studio's sessions: an image being edited with its two latest results, kept in a
thread-safe store that drops the least recently used session beyond its capacity."""
from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from PIL import Image

import gpstoken

from .requests import StudioError

__all__ = ["Result", "Session", "Sessions"]


@dataclass
class Result:
    """One encoded (or generated) state of a session."""

    tokens: gpstoken.GPSTokens
    image: Image.Image  # reconstruction, or the generated picture
    n_tokens: int  # tokens per patch asked for (partition) / held by the layout
    priority: list[list[int]]  # boxes the partition favoured
    version: int


@dataclass
class Session:
    """An image being edited: the working image and its two latest results (before, after)."""

    id: str
    image: Image.Image
    name: str
    kind: str  # "photo" | "generated"
    class_id: Optional[int] = None
    before: Optional[Result] = None
    after: Optional[Result] = None
    versions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Sessions:
    """Sessions by id, at most ``capacity`` of them (least recently used dropped first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def new(self, image: Image.Image, name: str, kind: str, class_id: Optional[int] = None) -> Session:
        """A new session (with a random id) for ``image``."""
        s = Session(secrets.token_urlsafe(12), image, name, kind, class_id)
        with self._lock:
            self._sessions[s.id] = s
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
        return s

    def get(self, sid: Any) -> Session:
        """The session ``sid`` (now the most recently used); a 404 :class:`StudioError` when unknown."""
        with self._lock:
            s = self._sessions.get(sid) if isinstance(sid, str) else None
            if s is None:
                raise StudioError("session: unknown or expired image; load the image again", 404)
            self._sessions.move_to_end(sid)
            return s

    def clear(self) -> None:
        """Drop every session."""
        with self._lock:
            self._sessions.clear()
