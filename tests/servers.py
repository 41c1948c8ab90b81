"""The suite's name for `proxy.background.BackgroundServer` (a server in a background thread)."""

from __future__ import annotations

from proxy.background import BackgroundServer

ServerThread = BackgroundServer

__all__ = ["ServerThread"]
