"""A minimal name → class registry for the framework-free core.

The adapters register framework classes in MMSeg's ``MODELS`` and Detectron2's
``META_ARCH_REGISTRY``; this one only maps the lowercase names users write in
configs (``defense='equi'``, ``attack='pgd'``) to core classes, and lists the valid
names when a name is unknown (MMEngine's error does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Registry:
    """Maps lowercase names to classes; ``build`` instantiates from a config dict."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering ``cls`` under ``name`` (lowercase, unique)."""
        if name != name.lower():
            raise ValueError(f"{self.kind} names are lowercase; got {name!r}")

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered to {self._entries[name].__name__}")
            self._entries[name] = cls
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> type:
        if not isinstance(name, str) or name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def build(self, cfg: str | dict[str, Any], **defaults: Any) -> Any:
        """Build from ``'name'`` or ``dict(type='name', **kwargs)``; ``defaults`` fill missing keys."""
        if isinstance(cfg, str):
            cfg = {"type": cfg}
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise TypeError(f"{self.kind} config must be a name or a dict with a 'type' key; got {cfg!r}")
        kwargs = dict(cfg)
        cls = self.get(kwargs.pop("type"))
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        return cls(**kwargs)
