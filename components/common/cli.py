"""What the stages' command lines share: their defaults are the stage functions' own.

Each stage has one function that both its KFP component and its ``python -m`` command call
(``beam_pipeline.run``, ``training.train``, ...); its signature is the one place a stage's
defaults are written. The component restates them (KFP needs literal defaults in the
function it ships to the container; tests/test_defaults.py checks they agree), and the
command line reads them from here.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Sequence
from typing import Any


def defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The default value of each parameter of ``function`` that has one."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def parameter_help(functions: Sequence[Callable[..., Any]]) -> dict[str, str]:
    """Each parameter's description in the Google-style docstrings of ``functions`` (the
    first that documents it wins), as KFP itself reads component docstrings."""
    import docstring_parser

    helps: dict[str, str] = {}
    for function in functions:
        for param in docstring_parser.parse(inspect.getdoc(function) or "").params:
            helps.setdefault(param.arg_name, " ".join((param.description or "").split()))
    return helps


def add_function_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    function: Callable[..., Any],
    names: Sequence[str],
    documented_by: Sequence[Callable[..., Any]] = (),
) -> None:
    """Adds a ``--flag`` for each parameter ``names`` of ``function``, typed by its
    annotation (str, int, float, bool as ``--x/--no-x``, list as repeated values), its
    help from the docstrings of ``function`` and ``documented_by`` and its default shown.
    A flag not given parses to None, so the caller passes only what was set and the
    function's own default applies."""
    helps = parameter_help([function, *documented_by])
    signature = inspect.signature(function)
    for name in names:
        parameter = signature.parameters[name]
        kind = parameter.annotation
        kind = {"str": str, "int": int, "float": float, "bool": bool, "list": list}.get(kind, kind)
        text = helps.get(name, "")
        if parameter.default is not inspect.Parameter.empty:
            text += f" (default: {parameter.default!r})"
        flag = "--" + name.replace("_", "-")
        text = text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        elif kind is list:
            parser.add_argument(flag, nargs="*", default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=text)
