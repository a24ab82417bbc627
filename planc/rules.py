"""Every rule planc reports, with the one line of what it guards: the registry that docs/rules.md,
the tests and `planc` itself read.

A rule is declared next to the code that reports it, in that module's RULES (parse.py, resolve.py,
elaborate.py, each pass of checks/, estimate/, dryrun.py); this module only gathers them, in the
order a plan meets them, and refuses a name declared twice.
"""
from __future__ import annotations


def declaring_modules() -> tuple:
    from . import dryrun, elaborate, estimate, parse, resolve
    from .checks import passes

    return (parse, resolve, elaborate, *passes(), estimate, dryrun)


def all_rules() -> dict[str, str]:
    """Rule name -> one line of what it guards."""
    rules: dict[str, str] = {}
    for module in declaring_modules():
        for name, line in module.RULES.items():
            if name in rules:
                raise AssertionError(f"rule {name!r} is declared twice (again in {module.__name__})")
            rules[name] = line
    return rules
