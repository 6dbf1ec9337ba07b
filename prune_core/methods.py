"""Pruning methods as registered entries: one place per method for everything the project asks of
it (after timm's register-with-metadata and open_lth's per-strategy hyperparameters).

An entry (``PruningMethod``) carries the mask function and the method's metadata:

- ``options``: its own settings (``MethodOption``: default, check, CLI flag, search domain), which
  a ``PruneConfig`` holds under ``options`` and a recipe holds as flat keys (``"norm": 2``);
- ``validate``: checks across the recipe (N:M fixes the sparsity and the schedule);
- ``mask_kwargs``: the keyword arguments of the mask function for a config (default: the options
  by name), given the model and an example batch (ln_structured ties channels there);
- ``run_name``: the method's part of a run name (``prune``, ``l2_structured``, ``nm2of4``);
- ``params``: the MLflow params it logs (default: its options);
- ``protects_classifier``: never prune the output layer (a structured cut of its neurons would
  delete classes); ``can_remove_channels``: its zeroed channels can be removed physically.

``run_pruning``, ``python -m prune_core``, the sweep's trial and the search spaces ask the entry;
none of them switches on a method's name. A user's method is one decorator::

    @register_method("block", options=(MethodOption("block_size", 4, int_at_least(1)),))
    def block_masks(targets, sparsity, generator=None, block_size=4): ...

Nothing here imports torch: the entries are plain data around the mask functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .registry import Registry

MaskFn = Callable[..., list]


@dataclass(frozen=True)
class Check:
    """A validity test of one option value and the words that say what is allowed."""

    test: Callable[[Any], bool]
    allowed: str

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def one_of(*choices: Any) -> Check:
    """Values equal to one of ``choices`` (and of the same type: True is not 1)."""
    return Check(
        lambda v: any(v == c and type(v) is type(c) for c in choices),
        ", ".join(str(c) for c in choices),
    )


def int_at_least(low: int) -> Check:
    """Integers >= ``low`` (not booleans)."""
    return Check(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
        f"an integer >= {low}",
    )


@dataclass(frozen=True)
class MethodOption:
    """One setting of a pruning method.

    ``search``: the domain a search space suggests it from: a tuple of choices (categorical) or
    ``range(low, high + 1)`` (integers); None if spaces leave it at its default. ``flag``: its
    flag in ``python -m prune_core`` (default ``--name-with-dashes``; "" for none), parsed with
    ``parse`` (default: the type of ``default``).
    """

    name: str
    default: Any
    check: Check | None = None
    help: str = ""
    search: tuple | range | None = None
    flag: str | None = None
    parse: Callable[[str], Any] | None = None

    @property
    def cli_flag(self) -> str:
        """The option's flag in ``python -m prune_core`` ("" for none)."""
        return f"--{self.name.replace('_', '-')}" if self.flag is None else self.flag

    def validate(self, value: Any, method: str) -> None:
        """Raise ``ValueError`` (one line, ``prune.NAME=VALUE is invalid; allowed: ...``)."""
        if self.check is not None and not self.check(value):
            raise ValueError(
                f"prune.{self.name}={value!r} is invalid for method {method}; "
                f"allowed: {self.check.allowed}"
            )


@dataclass(frozen=True)
class MethodFlag:
    """A flag of ``python -m prune_core`` that sets several options at once (``--nm 2:4``):
    ``to_options`` turns its text into option values (``ValueError`` with one line if bad)."""

    flag: str
    default: str
    to_options: Callable[[str], dict[str, Any]]
    help: str = ""


@dataclass(frozen=True)
class PruningMethod:
    """A registered pruning method: its mask function and metadata (see the module docstring)."""

    name: str
    masks: MaskFn
    options: tuple[MethodOption, ...] = ()
    validate: Callable[[Any], None] | None = None  # gets the PruneConfig; raises ValueError
    mask_kwargs: Callable[..., dict[str, Any]] | None = None  # (config, model, example, targets)
    run_name: Callable[[Mapping[str, Any]], str] | None = None  # (options) -> name part
    params: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None  # (options) -> params
    protects_classifier: bool = False
    can_remove_channels: bool = False
    flags: tuple[MethodFlag, ...] = ()  # flags setting several options (``--nm``)
    # the sparsity the options fix (N:M: 1 - N/M), None where the recipe chooses it
    fixed_sparsity: Callable[[Mapping[str, Any]], float] | None = None
    doc: str = field(default="", compare=False)

    def __call__(self, targets: list, sparsity: float, **kwargs: Any) -> list:
        """The keep-masks of ``targets`` at cumulative ``sparsity`` (the mask function)."""
        return self.masks(targets, sparsity, **kwargs)

    def defaults(self) -> dict[str, Any]:
        """Every option at its default."""
        return {o.name: o.default for o in self.options}

    def option_names(self) -> tuple[str, ...]:
        """The names of the method's options, in declaration order."""
        return tuple(o.name for o in self.options)

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every option, ``given`` over the defaults, each checked; raises ``ValueError`` (one
        line) for a value out of range or a key that is not an option of this method."""
        unknown = sorted(set(given) - set(self.option_names()))
        if unknown:
            allowed = ", ".join(self.option_names()) or "none"
            raise ValueError(
                f"prune.{unknown[0]} is not an option of method {self.name}; its options: {allowed}"
            )
        values = {**self.defaults(), **given}
        for option in self.options:
            option.validate(values[option.name], self.name)
        return values

    def name_part(self, options: Mapping[str, Any]) -> str:
        """The method's part of a run name: ``run_name(options)``, else the method's name with
        each option that differs from its default (``block_bs8`` style: name and value)."""
        if self.run_name is not None:
            return self.run_name(options)
        changed = [f"{o.name}{options[o.name]}" for o in self.options if o.name in options]
        return "_".join([self.name, *changed])

    def logged_params(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The MLflow params of the method's options for one run."""
        if self.params is not None:
            return self.params(options)
        return {o.name: options[o.name] for o in self.options if o.name in options}


PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning method")


def register_method(
    name: str, options: tuple[MethodOption, ...] = (), **metadata: Any
) -> Callable[[MaskFn], MaskFn]:
    """Decorator: register the mask function it wraps as pruning method ``name`` with
    ``options`` and ``metadata`` (``PruningMethod``'s other fields). The function is returned
    unchanged, so it can still be called directly."""

    def decorator(masks: MaskFn) -> MaskFn:
        entry = PruningMethod(name, masks, tuple(options), doc=masks.__doc__ or "", **metadata)
        PRUNING_METHODS.register(name)(entry)
        return masks

    return decorator


def get_method(name: str) -> PruningMethod:
    """The entry of pruning method ``name`` (``KeyError`` listing the valid names)."""
    from . import pruning  # noqa: F401  (registers the built-in methods)

    return PRUNING_METHODS.get(name)


def option_keys() -> tuple[str, ...]:
    """Every option name of every registered method, without repeats, by method name."""
    from . import pruning  # noqa: F401  (registers the built-in methods)

    seen: dict[str, None] = {}
    for method in PRUNING_METHODS:
        for option in PRUNING_METHODS.get(method).options:
            seen.setdefault(option.name, None)
    return tuple(seen)
