"""The machinery behind :mod:`art_generalist.train.options`: option fields that carry their flat keyword,
documentation and displayed default, and the shared behaviour of option groups (flat keywords in
and out, validation on every change, rows for the README's knob table)."""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Iterator, Optional


def option(default: Any, flat: str, doc: str, shown: Optional[str] = None, in_settings: bool = True) -> Any:
    """A dataclass field with its flat keyword name, documentation and displayed default;
    ``in_settings=False`` for an option that cannot change a result (progress bars), which
    checkpoints then do not compare."""
    meta = {"flat": flat, "doc": doc, "shown": shown, "in_settings": in_settings}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def describe(value: Any) -> Any:
    """A plain, process-independent description of a setting (for checkpoints and reports)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return repr(value)


def check_int(value: Any, name: str, minimum: int) -> None:
    """Refuse anything but an integer >= ``minimum`` (booleans included), naming the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


class Options:
    """Shared behaviour of the option groups: flat names in and out, rows for the docs."""

    @classmethod
    def fields(cls) -> Iterator[tuple[str, dataclasses.Field]]:
        """``(attribute, field)`` of every option, nested groups expanded, in declaration order."""
        for f in dataclasses.fields(cls):
            if "group" in f.metadata:  # a nested option group
                yield from ((f"{f.name}.{a}", g) for a, g in f.metadata["group"].fields())
            else:
                yield f.name, f

    @classmethod
    def flat_names(cls) -> list[str]:
        return [f.metadata["flat"] for _, f in cls.fields()]

    @classmethod
    def from_options(cls, **options: Any) -> "Options":
        """Build from flat keywords (e.g. ``ema_decay=0.9``); unknown names are refused."""
        return cls().replace(**options)

    def replace(self, **options: Any) -> "Options":
        """A copy with the given flat options changed (validated again)."""
        by_flat = {f.metadata["flat"]: path for path, f in self.fields()}
        unknown = sorted(set(options) - set(by_flat))
        if unknown:
            raise ValueError(f"Unknown option(s) {unknown} for {type(self).__name__}; valid options: "
                             f"{sorted(by_flat)}.")
        groups: dict[str, dict] = {}
        top: dict[str, Any] = {}
        for flat, value in options.items():
            path = by_flat[flat]
            if "." in path:
                group, attr = path.split(".")
                groups.setdefault(group, {})[attr] = value
            else:
                top[path] = value
        for group, changes in groups.items():
            top[group] = dataclasses.replace(getattr(self, group), **changes)
        return dataclasses.replace(self, **top)

    def options(self) -> dict[str, Any]:
        """The current values by flat name."""
        out = {}
        for path, f in self.fields():
            obj = self
            for part in path.split("."):
                obj = getattr(obj, part)
            out[f.metadata["flat"]] = obj
        return out

    def settings(self) -> dict[str, Any]:
        """Plain descriptions by flat name of the options that can change a result, for
        checkpoints and exports."""
        kept = {f.metadata["flat"] for _, f in self.fields() if f.metadata.get("in_settings", True)}
        return {k: describe(v) for k, v in self.options().items() if k in kept}

    @classmethod
    def rows(cls) -> list[tuple[str, str, str]]:
        """``(flat name, default, documentation)`` for the README's knob table."""
        defaults = cls().options()
        return [(f.metadata["flat"], f.metadata["shown"] or repr(defaults[f.metadata["flat"]]), f.metadata["doc"])
                for _, f in cls.fields()]


def group(cls: type) -> Any:
    """A nested option group (its class is recorded for :meth:`Options.fields`)."""
    return field(default_factory=cls, metadata={"group": cls})
