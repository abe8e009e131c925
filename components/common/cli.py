"""What the stages' command lines share: their defaults are the stage functions' own.

Each stage has one function that both its KFP component and its ``python -m`` command call
(``beam_pipeline.run``, ``training.train``, ...); its signature is the one place a stage's
defaults are written. The component restates them (KFP needs literal defaults in the
function it ships to the container; tests/test_defaults.py checks they agree), and the
command line reads them from here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The default value of each parameter of ``function`` that has one."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
