"""The frozen values with an ``__init__`` of their own (faster than a frozen dataclass's: see
stronghold/verdict.py) build what the dataclass's generated one would, and stay frozen."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from stronghold.findings import Findings
from stronghold.precedence import Facts, Ruling
from stronghold.verdict import Action, Category, RecipientDecision, Route, TraceStep, Verdict

OWN_INIT = [TraceStep, RecipientDecision, Verdict, Findings, Facts, Ruling]


def generated(cls: type) -> type:
    """The same fields (names, order, defaults) with the dataclass's own ``__init__``."""
    fields = [(f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
              for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(f"Generated{cls.__name__}", fields, frozen=True)


@pytest.mark.parametrize("cls", OWN_INIT, ids=lambda c: c.__name__)
def test_own_init_builds_what_the_generated_one_does(cls: type) -> None:
    twin = generated(cls)
    assert "__init__" in cls.__dict__ and dataclasses.is_dataclass(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    assert list(inspect.signature(cls).parameters) == names  # same order: positional calls agree
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    given = {name: object() for name in required}
    assert vars(cls(**given)) == vars(twin(**given))  # every default as the dataclass gives it
    every: list[Any] = [object() for _ in names]
    assert vars(cls(*every)) == vars(twin(*every)) == dict(zip(names, every, strict=True))


def test_own_init_values_stay_frozen_and_compare_by_fields() -> None:
    step = TraceStep("score", "clean", "0.1<0.5")
    assert step == TraceStep("score", "clean", "0.1<0.5") and hash(step) == hash(TraceStep("score", "clean", "0.1<0.5"))
    assert step != TraceStep("score", "spam", "0.1<0.5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.outcome = "spam"  # type: ignore[misc]
    decision = RecipientDecision("a@x.example", Action.ACCEPT, Category.CLEAN, "clean", (step,))
    assert dataclasses.replace(decision, route=Route.DELIVER).route is Route.DELIVER
    assert repr(step) == "TraceStep(step='score', outcome='clean', detail='0.1<0.5')"
    assert Findings().personal == {} and Findings().personal is not Findings().personal


def test_the_summary_is_built_once_outside_the_fields() -> None:
    verdict = Verdict(Action.ACCEPT, Category.CLEAN, 0.1, 0.5, None,
                      (RecipientDecision("a@x.example", Action.ACCEPT, Category.CLEAN, "clean",
                                         (TraceStep("score", "clean", "0.1<0.5"),)),),
                      (TraceStep("antivirus", "clean"),))
    line = "antivirus=clean rcpt=<a@x.example>:accept(clean)[score=clean(0.1<0.5)]"
    assert verdict.summary == line and verdict.summary is verdict.summary
    assert verdict == dataclasses.replace(verdict)  # the kept line is no field
    changed = dataclasses.replace(verdict, trace=())
    assert changed.summary == "rcpt=<a@x.example>:accept(clean)[score=clean(0.1<0.5)]"
