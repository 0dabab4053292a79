"""kvm._namedtuple.NamedTuple makes the classes typing.NamedTuple makes (typing is the oracle)."""

from __future__ import annotations

import inspect
import pickle
import typing

import pytest

from kvm._namedtuple import NamedTuple


def _point_class(base: type) -> type:
    class Point(base):  # type: ignore[misc,valid-type]
        """A point."""

        x: int
        y: int = 2
        label: str = "p"

        def norm1(self) -> int:
            return abs(self.x) + abs(self.y)

        @property
        def doubled(self) -> tuple[int, int]:
            return 2 * self.x, 2 * self.y

        def _private(self) -> str:
            return self.label * 2

    return Point


Ours, Theirs = _point_class(NamedTuple), _point_class(typing.NamedTuple)  # type: ignore[arg-type]


@pytest.mark.parametrize("attr", ["_fields", "_field_defaults", "__doc__", "__module__", "__qualname__", "__name__"])
def test_class_attributes_match_typing(attr):
    assert getattr(Ours, attr) == getattr(Theirs, attr)


def test_type_hints_and_signature_match_typing():
    assert typing.get_type_hints(Ours) == typing.get_type_hints(Theirs) == {"x": int, "y": int, "label": str}
    parameters = [[(p.name, p.default, p.kind) for p in inspect.signature(cls).parameters.values()] for cls in (Ours, Theirs)]
    assert parameters[0] == parameters[1]
    assert all(p.annotation is not inspect.Parameter.empty for p in inspect.signature(Ours).parameters.values())


def test_instances_behave_as_typing_s():
    ours, theirs = Ours(1), Theirs(1)
    assert tuple(ours) == tuple(theirs) == (1, 2, "p")
    assert repr(ours) == repr(theirs) == "Point(x=1, y=2, label='p')"
    assert ours.norm1() == 3 and ours.doubled == (2, 4) and ours._private() == "pp"
    assert ours._replace(y=5) == (1, 5, "p") and ours._asdict() == theirs._asdict()
    assert Ours._make([3, 4, "q"]) == (3, 4, "q")
    assert isinstance(ours, tuple) and [c.__name__ for c in Ours.__mro__] == [c.__name__ for c in Theirs.__mro__]
    with pytest.raises(AttributeError):
        ours.x = 9
    with pytest.raises(TypeError):
        Ours()


def test_module_level_classes_pickle():
    from kvm.spec import FieldSpec

    field = FieldSpec("regs.rip", 128, 8, "__u64")
    assert pickle.loads(pickle.dumps(field)) == field and field.bit_offset is None


def test_what_typing_refuses_is_refused():
    with pytest.raises(TypeError, match="without a default follows"):
        class Bad(NamedTuple):
            x: int = 0
            y: int

    with pytest.raises(AttributeError, match="_asdict"):
        class Overwrites(NamedTuple):
            x: int

            def _asdict(self) -> dict[str, int]:
                return {}

    with pytest.raises(TypeError, match="derives from NamedTuple alone"):
        class Mixed(NamedTuple, int):  # type: ignore[misc]
            x: int
