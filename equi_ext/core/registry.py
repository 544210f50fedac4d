"""A minimal name → class registry for the framework-free core.

It maps the lowercase names users write in configs (``defense='equi'``, ``attack='pgd'``)
to core classes and is strict: an unknown name or a setting the chosen class would ignore
is an error that lists what is valid, never a silently dropped key.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def init_arguments(cls: type) -> set[str]:
    """Named constructor arguments of ``cls``, following ``**kwargs`` up the class hierarchy, or to the class
    named by ``forwards_settings_to`` when ``cls`` hands its ``**kwargs`` to an object of another class."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
        if vars(klass).get("forwards_settings_to") is not None:
            return names | init_arguments(vars(klass)["forwards_settings_to"])
    return names


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss of one of ``candidates``, else ``''``."""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry:
    """Maps lowercase names to classes; ``build`` instantiates from a config dict."""

    def __init__(self, kind: str, contract: Iterable[str] = ()) -> None:
        self.kind = kind
        #: class attributes every registered class must declare (its answers to what the callers ask of it)
        self.contract = tuple(contract)
        self._entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering ``cls`` under ``name`` (lowercase, unique)."""
        if name != name.lower():
            raise ValueError(f"{self.kind} names are lowercase; got {name!r}")

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered to {self._entries[name].__name__}")
            missing = [attr for attr in self.contract if not hasattr(cls, attr)]
            if missing:
                raise TypeError(f"{self.kind} {name!r} ({cls.__name__}) does not declare {', '.join(missing)}; "
                                f"every {self.kind} declares {', '.join(self.contract)}")
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

    def settings(self, name: str) -> list[str]:
        """The keys a config of ``name`` may set: its constructor's arguments, less the model views
        (``model_views``: callables equi-ext supplies from the model, e.g. an attack's ``loss_fn``)."""
        cls = self.get(name)
        return sorted(init_arguments(cls) - set(getattr(cls, "model_views", ())))

    def check_keys(self, name: str, keys: Iterable[str], *, views_allowed: bool = False) -> type:
        """The class of ``name``; a key its constructor does not take is a ``TypeError`` naming the key,
        the class and the keys it accepts (with ``views_allowed=False``, a model view counts as not taken)."""
        cls = self.get(name)
        accepted = set(init_arguments(cls)) if views_allowed else set(self.settings(name))
        for key in keys:
            if key in accepted:
                continue
            if key in getattr(cls, "model_views", ()):
                raise TypeError(f"{self.kind} {name!r} ({cls.__name__}): {key!r} is supplied by equi-ext from the "
                                f"model and cannot be set in a config")
            raise TypeError(f"{self.kind} {name!r} ({cls.__name__}) does not accept {key!r}{did_you_mean(key, accepted)}; "
                            f"it accepts: {', '.join(sorted(accepted))}")
        return cls

    def build(self, cfg: str | dict[str, Any], **defaults: Any) -> Any:
        """Build from ``'name'`` or ``dict(type='name', **kwargs)``; ``defaults`` fill missing keys
        (and, like every key, must be arguments of the chosen class)."""
        if isinstance(cfg, str):
            cfg = {"type": cfg}
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise TypeError(f"{self.kind} config must be a name or a dict with a 'type' key; got {cfg!r}")
        kwargs = dict(cfg)
        name = kwargs.pop("type")
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        cls = self.check_keys(name, kwargs, views_allowed=True)
        return cls(**kwargs)
