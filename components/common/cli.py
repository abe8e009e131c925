"""What the stages' command lines share: their defaults are the stage functions' own.

Each stage has one function that both its KFP component and its ``python -m`` command call
(``beam_pipeline.run``, ``training.train``, ...); its signature is the one place a stage's
defaults are written. The component restates them (KFP needs literal defaults in the
function it ships to the container; tests/test_defaults.py checks they agree), and the
command line reads them from here: ``add_function_arguments`` makes a flag of each
parameter, typed, documented and defaulted by the function itself.
"""

from __future__ import annotations

import argparse
import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The default value of each parameter of ``function`` that has one."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def parameter_names(function: Callable[..., Any], leaving_out: Sequence[str] = ()) -> list[str]:
    """The parameters of ``function`` in their order, less those ``leaving_out``."""
    names = list(inspect.signature(function).parameters)
    unknown = set(leaving_out) - set(names)
    if unknown:
        raise ValueError(f"{function.__name__} has no parameter(s) {sorted(unknown)}")
    return [name for name in names if name not in leaving_out]


def parameter_help(functions: Sequence[Callable[..., Any]]) -> dict[str, str]:
    """Each parameter's description in the Google-style docstrings of ``functions`` (the
    first that documents it wins), as KFP itself reads component docstrings; on one line,
    without reStructuredText's literal quotes."""
    import docstring_parser

    helps: dict[str, str] = {}
    for function in functions:
        for param in docstring_parser.parse(inspect.getdoc(function) or "").params:
            text = " ".join((param.description or "").split()).replace("``", "")
            helps.setdefault(param.arg_name, text)
    return helps


def add_function_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    function: Callable[..., Any],
    names: Sequence[str],
    documented_by: Sequence[Callable[..., Any]] = (),
    *,
    choices: Mapping[str, Sequence[Any]] | None = None,
    flags: Mapping[str, str] | None = None,
    fill_defaults: bool = False,
) -> None:
    """Adds a ``--flag`` for each parameter ``names`` of ``function``, typed by its
    annotation (str, int, float, bool as ``--x/--no-x``, a list or sequence as repeated
    values), its help from the docstrings of ``function`` and ``documented_by`` and its
    default shown. A parameter without a default is a required flag.

    Args:
        parser: The parser, or one of its groups, to add the flags to.
        function: The function whose parameters the flags set.
        names: The parameters to add, in this order.
        documented_by: Functions whose docstrings describe the parameters that of
            ``function`` leaves out (its own description comes first).
        choices: The values a parameter's flag accepts, by parameter name.
        flags: A parameter's flag when it is not ``--<name with dashes>`` (its parsed
            value keeps the parameter's name).
        fill_defaults: A flag not given parses to the function's default, so the parsed
            namespace is the whole call. Otherwise it parses to None: the caller passes on
            only what was given, and the function's default applies.
    """
    helps = parameter_help([function, *documented_by])
    signature = inspect.signature(function)
    choices, flags = choices or {}, flags or {}
    for name in names:
        parameter = signature.parameters[name]
        kind, several = _value_type(name, parameter.annotation)
        options: dict[str, Any] = {"dest": name, "help": _help(helps.get(name, ""), parameter)}
        if parameter.default is inspect.Parameter.empty:
            options["required"] = True
        else:
            options["default"] = parameter.default if fill_defaults else None
        if name in choices:
            options["choices"] = choices[name]
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            if several:
                options["nargs"] = "*"
        parser.add_argument(flags.get(name, "--" + name.replace("_", "-")), **options)


_SCALARS = {"str": str, "int": int, "float": float, "bool": bool}
# A list or sequence annotation as a string (``from __future__ import annotations``):
# ``list``, ``Sequence[str]``, ``tuple[int, ...]``.
_SEQUENCE = re.compile(r"(?:list|tuple|Sequence)(?:\[(\w+)(?:, \.\.\.)?\])?")


def _value_type(name: str, annotation: Any) -> tuple[Callable[[str], Any] | None, bool]:
    """The type a parameter's flag converts its values to (None: strings as given), and
    whether it takes several values."""
    if isinstance(annotation, str):
        if annotation in _SCALARS:
            return _SCALARS[annotation], False
        match = _SEQUENCE.fullmatch(annotation)
        if match:
            return _SCALARS.get(match[1] or "str"), True
    elif annotation in _SCALARS.values():
        return annotation, False
    elif (typing.get_origin(annotation) or annotation) in (list, tuple, Sequence):
        items = typing.get_args(annotation)
        return (items[0] if items else None), True
    raise TypeError(f"parameter {name!r}: no command-line type for its annotation {annotation!r}")


def _help(description: str, parameter: inspect.Parameter) -> str:
    """A flag's help: the parameter's description and its default (argparse formats help
    with ``%``, so a literal one is doubled)."""
    if parameter.default is not inspect.Parameter.empty:
        description += f" (default: {parameter.default!r})"
    return description.replace("%", "%%")
