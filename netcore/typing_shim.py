"""The three names from ``typing`` that run, without importing ``typing``.

Every module here starts with ``from __future__ import annotations``, so its
annotations are strings that only a type checker reads, and its other typing
names are imported under ``if TYPE_CHECKING:``. Three names are used at run
time: ``NamedTuple`` (class syntax), ``Protocol`` (as a base class) and
``cast``. Importing ``typing`` for them would cost a server about 0.45 MB of
RSS; these stand-ins cost a few kilobytes, and type checkers see the real
ones (``TYPE_CHECKING`` is true for them).

``NamedTuple`` builds the same class as ``typing.NamedTuple`` does: a
``collections.namedtuple`` with the annotated fields, their defaults, and
the body's methods, properties and docstring. Only the class syntax is
supported (``class Point(NamedTuple): x: int``).
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False

__all__ = ["NamedTuple", "Protocol", "cast"]

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple, Protocol as Protocol, cast as cast
else:
    def cast(typ, value):
        """Return ``value``: a type checker reads ``typ``, nothing at run time does."""
        return value

    class Protocol:
        """A base class that marks an interface; it adds no slots and no behaviour."""

        __slots__ = ()

    # What ``type`` puts in every class body; never copied onto the tuple class.
    _CLASS_BODY = frozenset(("__module__", "__qualname__", "__annotations__", "__dict__",
                             "__weakref__", "__slots__", "__orig_bases__", "__classcell__",
                             "__static_attributes__", "__firstlineno__", "__annotate__",
                             "__annotate_func__", "__annotations_cache__"))

    class _NamedTupleMeta(type):
        def __new__(mcls, typename, bases, namespace):
            if namespace.get("_root"):
                return super().__new__(mcls, typename, bases, namespace)
            annotations = dict(namespace.get("__annotations__", {}))
            fields = list(annotations)
            with_default = [name for name in fields if name in namespace]
            if with_default != fields[len(fields) - len(with_default):]:
                raise TypeError(f"{typename}: a field without a default follows one with a "
                                f"default ({', '.join(fields)})")
            cls = namedtuple(typename, fields, module=namespace.get("__module__"),
                             defaults=[namespace[name] for name in with_default])
            cls.__qualname__ = namespace.get("__qualname__", typename)
            cls.__annotations__ = annotations
            for key, value in namespace.items():
                if key not in fields and key not in _CLASS_BODY:
                    setattr(cls, key, value)
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Subclass it with annotated fields, as ``typing.NamedTuple``."""

        _root = True
