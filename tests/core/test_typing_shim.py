"""netcore's stand-ins for the three ``typing`` names that run (typing_shim).

They must build what ``typing`` builds, since type checkers read the real
ones and the code runs on these.
"""

import os
import pickle
import subprocess
import sys
import typing

import pytest

from netcore import typing_shim
from netcore.typing_shim import NamedTuple, Protocol, cast


class Point(NamedTuple):
    """A point on the board."""

    x: int
    y: int = 0
    label: str = ""

    def moved(self, dx: int) -> "Point":
        return self._replace(x=self.x + dx)

    @property
    def norm(self) -> int:
        return abs(self.x) + abs(self.y)


class TypingPoint(typing.NamedTuple):
    """A point on the board."""

    x: int
    y: int = 0
    label: str = ""


def test_the_runtime_names_are_the_stand_ins_not_typing_s():
    assert NamedTuple is not typing.NamedTuple and Protocol is not typing.Protocol
    assert typing_shim.TYPE_CHECKING is False


def test_a_named_tuple_is_what_typing_builds():
    p = Point(3, label="a")
    assert isinstance(p, tuple) and tuple(p) == (3, 0, "a")
    assert Point._fields == TypingPoint._fields
    assert Point._field_defaults == TypingPoint._field_defaults
    assert repr(p) == "Point(x=3, y=0, label='a')"
    assert Point.__doc__ == TypingPoint.__doc__
    assert (Point.__module__, Point.__qualname__) == (__name__, "Point")
    assert list(Point.__annotations__) == ["x", "y", "label"]
    assert p == Point(3, 0, "a") and p == (3, 0, "a") and hash(p) == hash((3, 0, "a"))
    x, y, label = p
    assert (x, y, label) == (3, 0, "a")


def test_its_body_s_methods_and_properties_are_kept():
    p = Point(-2, 5)
    assert p.moved(4) == Point(2, 5)
    assert p.norm == 7
    assert Point._make([1, 2, "b"]) == Point(1, 2, "b")


def test_it_pickles_by_name():
    p = Point(1, 2, "c")
    assert pickle.loads(pickle.dumps(p)) == p


def test_a_field_without_a_default_after_one_with_a_default_is_refused():
    with pytest.raises(TypeError, match="without a default"):
        class Bad(NamedTuple):
            a: int = 1
            b: int


def test_a_protocol_base_adds_no_instance_dict():
    class Shape(Protocol):
        __slots__ = ()

        def area(self) -> int: ...

    class Square(Shape):
        __slots__ = ("side",)

        def __init__(self, side: int) -> None:
            self.side = side

        def area(self) -> int:
            return self.side * self.side

    square = Square(3)
    assert square.area() == 9
    assert not hasattr(square, "__dict__")


def test_cast_returns_its_value_and_ignores_the_type():
    value = object()
    assert cast("List[int]", value) is value
    assert cast(int, value) is value


def test_netcore_imports_no_typing():
    """Type names are for type checkers: a server does not pay typing's RSS."""
    modules = sorted(name[:-3] for name in os.listdir(os.path.dirname(typing_shim.__file__))
                     if name.endswith(".py") and name != "__init__.py")
    code = (f"import sys; import {', '.join('netcore.' + m for m in modules)}; "
            "print('typing' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(typing_shim.__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
