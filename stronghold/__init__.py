"""Mail Stronghold: a Postfix milter that filters spam and viruses."""

from __future__ import annotations

import importlib.metadata

try:
    __version__ = importlib.metadata.version("mail-stronghold")
except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"
