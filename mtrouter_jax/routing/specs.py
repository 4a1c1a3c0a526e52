"""Routing policies by name: router and exploration specs, the tool-heuristic map, the ladder.

One parser serves ``mtrouter serve``, ``mtrouter collect/eval`` and ``mtrouter simulate``:

* routers: ``learned``, ``fixed:MODEL``, ``cheapest``, ``tool-heuristic``,
  ``error-escalation[:M1,M2,...]`` (cheap to strong), ``uniform`` (the paper's roulette),
  ``sticky:RHO`` (sticky roulette);
* exploration around a router: ``eps:E`` (ε-mixed with a uniform model), ``beta:B`` (the paper's
  β-mixed stage B: the router with probability B, else uniform), ``sticky:RHO[:E]`` (ε-mixed with
  E, default 0.1, and exploratory picks kept with probability RHO); see ``routing.explore``.

The tool-heuristic map (tool type -> model or model class) comes from a TOML file, from a pool
file's ``[tool_heuristic]`` table, or from ``DEFAULT_TOOL_CLASSES``/``DEFAULT_CLASS_MODELS``.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mtrouter_jax.routing import policies as routing
from mtrouter_jax.core.pool import Pool

ROUTERS = ("learned", "safe", "fixed:MODEL", "cheapest", "tool-heuristic", "error-escalation[:M1,M2,..]", "uniform",
           "sticky:RHO")
EXPLORES = ("eps:E", "beta:B", "sticky:RHO[:E]")
DEFAULT_STICKY_EPS = 0.1  # fresh exploratory draws of `sticky:RHO` (docs/live_loop.md measures the share)

# Information-gathering turns -> a cheap model; acting, computing and answering -> the strong one.
# Fixed before any ScienceWorld measurement (docs/live.md): a napkin rule, not a fitted table.
DEFAULT_TOOL_CLASSES = {
    "search": "cheap", "browse": "cheap", "file": "cheap", "explore": "cheap", "navigate": "cheap",
    "python": "strong", "bash": "strong", "reasoning": "strong", "answer": "strong", "act": "strong",
    "focus": "strong", "other": "strong", routing.START: "cheap",
}
DEFAULT_CLASS_MODELS = {"cheap": "gpt-oss-120b", "strong": "gpt-5"}
DEFAULT_LADDER = ("gpt-oss-120b", "deepseek-v3.2", "gpt-5")
OTHER = "other"  # the heuristic table's entry for tool types outside the vocabulary


class RouterSpecError(ValueError):
    """A router/exploration spec or a heuristic map is invalid; ``flag`` names the option."""

    def __init__(self, message: str, flag: str = "--router"):
        super().__init__(message if message.startswith(flag) else f"{flag}: {message}")
        self.flag = flag


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class ToolModelMap:
    """Tool type -> model name or model class; ``classes``: class -> model name.

    Types not listed fall back to ``DEFAULT_TOOL_CLASSES`` (``user_types`` records what the user
    named, for validation against the vocabulary)."""

    tools: Mapping[str, str] = field(default_factory=dict)
    classes: Mapping[str, str] = field(default_factory=dict)
    where: str = "<default tool map>"

    @property
    def user_types(self) -> tuple[str, ...]:
        return tuple(self.tools)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ToolModelMap":
        """``{"tools": {type: model|class}, "classes": {class: model}}`` (both optional)."""
        if not isinstance(d, Mapping):
            raise RouterSpecError(f"{where}: expected a table with [tools] and [classes]", "--tool-map")
        extra = set(d) - {"tools", "classes"}
        if extra:
            raise RouterSpecError(f"{where}: unknown key(s) {sorted(extra)} (expected 'tools' and 'classes')",
                                  "--tool-map")
        out = {}
        for key in ("tools", "classes"):
            t = d.get(key, {})
            if not isinstance(t, Mapping):
                raise RouterSpecError(f"{where}: {key}: expected a table of strings", "--tool-map")
            for k, v in t.items():
                if not isinstance(v, str) or not v:
                    raise RouterSpecError(f"{where}: {key}.{k}: expected a model or class name, got {v!r}",
                                          "--tool-map")
            out[key] = dict(t)
        return cls(out["tools"], out["classes"], where)

    @classmethod
    def from_file(cls, path: str | Path) -> "ToolModelMap":
        """A TOML/JSON file with ``[tools]``/``[classes]``, or a pool file with ``[tool_heuristic]``."""
        path = Path(path)
        if not path.exists():
            raise RouterSpecError(f"tool map file not found: {path}", "--tool-map")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise RouterSpecError(f"{path}: cannot parse: {e}", "--tool-map") from None
        if "model" in data:  # a pool file
            if "tool_heuristic" not in data:
                raise RouterSpecError(f"{path}: a pool file without a [tool_heuristic] table", "--tool-map")
            return cls.from_dict(data["tool_heuristic"], f"{path}: tool_heuristic")
        return cls.from_dict(data, str(path))

    def model_for(self, tool: str, pool: Pool) -> str:
        """Pool model serving turns after a ``tool`` turn."""
        target = self.tools.get(tool) or DEFAULT_TOOL_CLASSES.get(tool) or self.tools.get(OTHER) \
            or DEFAULT_TOOL_CLASSES[OTHER]
        if target in pool.names:
            return target
        classes = {**DEFAULT_CLASS_MODELS, **self.classes}
        if target not in classes:
            raise RouterSpecError(f"{self.where}: tool type {tool!r} maps to {target!r}, neither a pool model "
                                  f"({', '.join(pool.names)}) nor a class ({', '.join(sorted(classes))})"
                                  + _did_you_mean(target, list(pool.names) + list(classes)), "--tool-map")
        model = classes[target]
        if model in pool.names:
            return model
        if target in self.classes:
            raise RouterSpecError(f"{self.where}: class {target!r} names model {model!r}, which is not in pool "
                                  f"({', '.join(pool.names)})" + _did_you_mean(model, pool.names), "--tool-map")
        # a default class whose default model is not in this pool: cheapest / priciest by list price
        price = {m.name: m.price_input + m.price_output for m in pool.models}
        return min(price, key=price.get) if target == "cheap" else max(price, key=price.get)


def tool_table(pool: Pool, tools: Sequence[str], tool_map: ToolModelMap | None = None) -> np.ndarray:
    """(len(tools) + 2,) model index after each tool type of ``tools`` (the summary's vocabulary),
    then after an unknown type ("other" bucket), then for the first turn. Tool types the map names
    that the vocabulary lacks are errors (they could never fire)."""
    tool_map = tool_map or ToolModelMap()
    known = set(tools) | {OTHER, routing.START}
    for t in tool_map.user_types:
        if t not in known:
            raise RouterSpecError(f"{tool_map.where}: tool type {t!r} never occurs: the router sees "
                                  f"{', '.join(tools)} (+ {OTHER!r}, {routing.START!r})"
                                  + _did_you_mean(t, sorted(known)), "--tool-map")
    names = list(tools) + [OTHER, routing.START]
    return np.array([pool.index(tool_map.model_for(t, pool)) for t in names], np.int32)


def _number(text: str, what: str, flag: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise RouterSpecError(f"{flag}: {what} must be a number in [0, 1], got {text!r}", flag) from None
    if not 0.0 <= v <= 1.0:
        raise RouterSpecError(f"{flag}: {what} must be in [0, 1], got {v:g}", flag)
    return v


def _model(name: str, pool: Pool, flag: str) -> int:
    if name not in pool.names:
        raise RouterSpecError(f"{flag}: unknown model {name!r}; the pool has {', '.join(pool.names)}"
                              + _did_you_mean(name, pool.names), flag)
    return pool.index(name)


def build_router(spec: str, pool: Pool, tools: Sequence[str], *, tool_map: ToolModelMap | None = None,
                 learned: routing.RoutingPolicy | None = None, safe: routing.RoutingPolicy | None = None,
                 flag: str = "--router") -> routing.RoutingPolicy:
    """The routing policy named by ``spec`` over ``pool`` for summaries whose tool vocabulary is
    ``tools``. ``learned``/``safe``: the policies ``learned`` and ``safe`` mean (need a checkpoint)."""
    kind, _, arg = spec.strip().partition(":")
    if kind == "safe":
        if safe is None:
            raise RouterSpecError(f"{flag} safe needs a checkpoint trained with a reference policy (mtrouter train "
                                  "writes one); without a checkpoint use tool-heuristic or fixed:MODEL", flag)
        return safe
    if kind == "learned":
        if learned is None:
            raise RouterSpecError(f"{flag} learned needs a trained checkpoint (--checkpoint CKPT); without one "
                                  "use tool-heuristic, fixed:MODEL, error-escalation, cheapest, uniform or sticky:RHO",
                                  flag)
        return learned
    if kind == "fixed":
        if not arg:
            raise RouterSpecError(f"{flag} fixed needs a model: fixed:MODEL with one of {', '.join(pool.names)}", flag)
        return routing.fixed(_model(arg, pool, flag), arg)
    if kind == "cheapest" and not arg:
        return routing.cheapest()
    if kind == "tool-heuristic" and not arg:
        return routing.tool_heuristic(tool_table(pool, tools, tool_map))
    if kind == "error-escalation":
        names = [n.strip() for n in arg.split(",") if n.strip()] if arg else (
            [n for n in DEFAULT_LADDER if n in pool.names]
            or sorted(pool.names, key=lambda n: pool[n].price_input + pool[n].price_output))
        idx = [_model(n, pool, flag) for n in names]
        if len(set(idx)) != len(idx):
            raise RouterSpecError(f"{flag}: the escalation ladder names a model twice: {names}", flag)
        return routing.error_escalation(idx, len(pool), spec=f"error-escalation:{','.join(names)}")
    if kind in ("uniform", "random") and not arg:
        return routing.roulette(0.0)
    if kind == "sticky":
        return routing.roulette(_number(arg, "RHO", flag))
    raise RouterSpecError(f"{flag}: unknown router {spec!r}; choose one of {', '.join(ROUTERS)}"
                          + _did_you_mean(kind, ["learned", "safe", "fixed", "cheapest", "tool-heuristic",
                                                 "error-escalation", "uniform", "sticky"]), flag)


def parse_explore(spec: str, flag: str = "--explore") -> tuple[float, float]:
    """``(eps, rho)`` of an exploration spec (``eps:E``, ``beta:B`` or ``sticky:RHO[:E]``)."""
    kind, _, arg = spec.strip().partition(":")
    if kind == "eps":
        return _number(arg, "E", flag), 0.0
    if kind == "beta":
        return 1.0 - _number(arg, "B", flag), 0.0
    if kind == "sticky":
        rho, _, e = arg.partition(":")
        return (_number(e, "E", flag) if e else DEFAULT_STICKY_EPS), _number(rho, "RHO", flag)
    raise RouterSpecError(f"{flag}: unknown exploration {spec!r}; choose one of {', '.join(EXPLORES)}"
                          + _did_you_mean(kind, ["eps", "beta", "sticky"]), flag)


def with_exploration(policy: routing.RoutingPolicy, spec: str | None, flag: str = "--explore"
                     ) -> routing.RoutingPolicy:
    """``policy`` wrapped in the exploration ``spec`` (unchanged when ``spec`` is None/empty)."""
    if not spec:
        return policy
    eps, rho = parse_explore(spec, flag)
    return routing.explore(policy, eps=eps, rho=rho, spec=spec.strip())


__all__ = ["ROUTERS", "EXPLORES", "DEFAULT_TOOL_CLASSES", "DEFAULT_CLASS_MODELS", "DEFAULT_LADDER",
           "DEFAULT_STICKY_EPS", "RouterSpecError", "ToolModelMap", "tool_table", "build_router",
           "parse_explore", "with_exploration"]
