"""Model pool files: per-model prices, public attributes, hidden simulator profiles, endpoints.

A pool file is TOML (or JSON with the same structure); see docs/formats.md. Prices are USD per
1M tokens. ``attributes`` are the public metadata the outcome estimator may see; ``sim`` is the
simulator's hidden capability profile; ``endpoint`` is used only by the live router.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

DEFAULT_POOL_NAME = "default_pool.toml"


class PoolError(ValueError):
    """A pool file is malformed; the message names file, field and problem."""


@dataclass(frozen=True)
class SimProfile:
    """Hidden simulator capabilities of one model (never shown to routers)."""

    success: Mapping[str, float]  # tool type -> P(turn advances the task | no error)
    error_rate: float  # P(format violation / invalid action) per turn, independent over turns
    severity_mix: tuple[float, float, float]  # P(low, medium, high) given an error
    output_tokens: float  # mean completion tokens per turn
    early_submit: float  # P(answering prematurely) per turn before the answer phase


@dataclass(frozen=True)
class Endpoint:
    """Where the live router sends this model's calls; the key is read from ``api_key_env``."""

    base_url: str
    model_id: str
    api_key_env: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One model of the pool."""

    name: str
    price_input: float  # USD / 1M uncached input tokens
    price_cached_input: float  # USD / 1M cached input tokens
    price_output: float  # USD / 1M output tokens
    attributes: Mapping[str, float] = field(default_factory=dict)
    sim: SimProfile | None = None
    endpoint: Endpoint | None = None


@dataclass(frozen=True)
class Pool:
    """An ordered pool of models; the order defines action indices everywhere."""

    name: str
    models: tuple[ModelSpec, ...]
    # the file's optional [tool_heuristic] table ([tools], [classes]): the tool heuristic's map,
    # read (and checked against the pool) by the router that uses it
    tool_heuristic: Mapping[str, Any] | None = field(default=None, compare=False)

    @cached_property  # read on every decision: built once (the pool is frozen)
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.models)

    def index(self, name: str) -> int:
        try:
            return self._positions[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown model {name!r} (pool {self.name!r} has: {', '.join(self.names)})") from None

    def __getitem__(self, name: str) -> ModelSpec:
        return self.models[self.index(name)]

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """Sorted union of attribute keys (missing ones read as 0)."""
        return tuple(sorted({k for m in self.models for k in m.attributes}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in checkpoints); endpoints keep only the env var *name*."""
        out = []
        for m in self.models:
            d: dict[str, Any] = {
                "name": m.name,
                "price_input": m.price_input,
                "price_cached_input": m.price_cached_input,
                "price_output": m.price_output,
                "attributes": dict(m.attributes),
            }
            if m.sim is not None:
                d["sim"] = {
                    "success": dict(m.sim.success),
                    "error_rate": m.sim.error_rate,
                    "severity_mix": list(m.sim.severity_mix),
                    "output_tokens": m.sim.output_tokens,
                    "early_submit": m.sim.early_submit,
                }
            if m.endpoint is not None:
                d["endpoint"] = {
                    "base_url": m.endpoint.base_url,
                    "model_id": m.endpoint.model_id,
                    "api_key_env": m.endpoint.api_key_env,
                }
            out.append(d)
        doc: dict[str, Any] = {"pool": {"name": self.name}, "model": out}
        if self.tool_heuristic is not None:
            doc["tool_heuristic"] = json.loads(json.dumps(self.tool_heuristic))
        return doc

    def subset(self, names: list[str]) -> "Pool":
        return Pool(self.name, tuple(self[n] for n in names), self.tool_heuristic)


MODEL_KEYS = ("name", "price_input", "price_cached_input", "price_output", "attributes", "sim", "endpoint")
SIM_KEYS = ("success", "error_rate", "severity_mix", "output_tokens", "early_submit")
ENDPOINT_KEYS = ("base_url", "model_id", "api_key_env")


def _unknown_keys(where: str, d: Mapping, known: Sequence[str], table: str = "") -> None:
    """Refuse keys outside ``known``, each with its closest known key (a typo is the usual cause)."""
    extra = [k for k in d if k not in known]
    if not extra:
        return
    parts = []
    for k in extra:
        close = difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    s = "s" if len(extra) > 1 else ""
    tail = "" if all("did you mean" in p for p in parts) else f" (known keys: {', '.join(known)})"
    raise PoolError(f"{where}: {table}unknown key{s} {', '.join(parts)}{tail}")


def _num(where: str, d: Mapping, key: str, *, lo: float | None = 0.0, hi: float | None = None,
         required: bool = True, default: float | None = None, field: str | None = None) -> float:
    field = field or key
    if key not in d:
        if required:
            raise PoolError(f"{where}: {field}: missing (expected a number)")
        return default  # type: ignore[return-value]
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise PoolError(f"{where}: {field}: expected a finite number, got {v!r}")
    if lo is not None and v < lo:
        raise PoolError(f"{where}: {field}: must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise PoolError(f"{where}: {field}: must be <= {hi}, got {v}")
    return float(v)


def _parse_sim(where: str, s: Any) -> SimProfile:
    if not isinstance(s, Mapping):
        raise PoolError(f"{where}: sim: expected a table")
    _unknown_keys(where, s, SIM_KEYS, "[model.sim]: ")
    succ = s.get("success")
    if not isinstance(succ, Mapping) or not succ:
        raise PoolError(f"{where}: sim.success: expected a table tool_type -> probability")
    success = {k: _num(where, succ, k, lo=0.0, hi=1.0, field=f"sim.success.{k}") for k in succ}
    mix = s.get("severity_mix", [1 / 3, 1 / 3, 1 / 3])
    if (not isinstance(mix, list) or len(mix) != 3
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0 for x in mix)
            or not math.isclose(sum(mix), 1.0, abs_tol=1e-6)):
        raise PoolError(f"{where}: sim.severity_mix: expected 3 non-negative numbers (low, medium, high) "
                        f"summing to 1, got {mix!r}")
    return SimProfile(
        success=success,
        error_rate=_num(where, s, "error_rate", hi=1.0, field="sim.error_rate"),
        severity_mix=tuple(float(x) for x in mix),  # type: ignore[arg-type]
        output_tokens=_num(where, s, "output_tokens", lo=1.0, field="sim.output_tokens"),
        early_submit=_num(where, s, "early_submit", hi=1.0, required=False, default=0.0, field="sim.early_submit"),
    )


def _parse_endpoint(where: str, e: Any) -> Endpoint:
    if not isinstance(e, Mapping):
        raise PoolError(f"{where}: endpoint: expected a table")
    if "api_key" in e:  # before the unknown-key check: say why, never echo the value
        raise PoolError(f"{where}: endpoint.api_key: keys must not be stored in pool files; "
                        "name an env var in api_key_env")
    _unknown_keys(where, e, ENDPOINT_KEYS, "[model.endpoint]: ")
    for key in ("base_url", "model_id"):
        if not isinstance(e.get(key), str) or not e[key]:
            raise PoolError(f"{where}: endpoint.{key}: expected a non-empty string, got {e.get(key)!r}")
    env = e.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not env.isidentifier()):
        raise PoolError(f"{where}: endpoint.api_key_env: expected an environment variable name, got {env!r}")
    return Endpoint(e["base_url"], e["model_id"], env)


def _parse_model(where: str, d: Any) -> ModelSpec:
    """``where`` names the file and the model's position until its name is known; from then on the
    messages name the model: ``pool.toml: model 'gpt-5': price_output: missing``."""
    if not isinstance(d, Mapping):
        raise PoolError(f"{where}: expected a table, got {type(d).__name__}")
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PoolError(f"{where}: name: expected a non-empty string, got {name!r}")
    where = f"{where.rsplit(': ', 1)[0]}: model {name!r}"
    _unknown_keys(where, d, MODEL_KEYS)
    p_in = _num(where, d, "price_input")
    p_out = _num(where, d, "price_output")
    p_cached = _num(where, d, "price_cached_input", required=False, default=p_in)
    if p_cached > p_in:
        raise PoolError(f"{where}: price_cached_input: {p_cached} exceeds price_input {p_in}")
    attrs_raw = d.get("attributes", {})
    if not isinstance(attrs_raw, Mapping):
        raise PoolError(f"{where}: attributes: expected a table of numbers")
    attrs = {k: _num(where, attrs_raw, k, lo=None, field=f"attributes.{k}") for k in attrs_raw}
    sim = _parse_sim(where, d["sim"]) if "sim" in d else None
    endpoint = _parse_endpoint(where, d["endpoint"]) if "endpoint" in d else None
    return ModelSpec(name, p_in, p_cached, p_out, attrs, sim, endpoint)


def pool_from_dict(data: Mapping[str, Any], where: str = "<pool>") -> Pool:
    """Validate a parsed pool document."""
    models_raw = data.get("model")
    if not isinstance(models_raw, list) or not models_raw:
        close = difflib.get_close_matches("model", [str(k) for k in data if k != "model"], n=1)
        hint = f" (found {close[0]!r}: did you mean [[model]]?)" if close else ""
        raise PoolError(f"{where}: model: expected a non-empty array of [[model]] tables{hint}")
    models = tuple(_parse_model(f"{where}: model[{i}]", m) for i, m in enumerate(models_raw))
    seen: set[str] = set()
    for m in models:
        if m.name in seen:
            raise PoolError(f"{where}: model: duplicate model name {m.name!r}")
        seen.add(m.name)
    name = str(data.get("pool", {}).get("name", Path(str(where)).stem))
    th = data.get("tool_heuristic")
    if th is not None and not isinstance(th, Mapping):
        raise PoolError(f"{where}: tool_heuristic: expected a table with [tool_heuristic.tools] and "
                        "[tool_heuristic.classes]")
    return Pool(name, models, dict(th) if th is not None else None)


def load_pool(path: str | Path | None = None) -> Pool:
    """Load a pool file (TOML or JSON); ``None`` loads the embedded default pool."""
    if path is None:
        return pool_from_dict(tomllib.loads(default_pool_text()), "<default pool>")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pool file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise PoolError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
    return pool_from_dict(data, str(path))


def default_pool_text() -> str:
    """The embedded default pool file, comments included (``mtrouter pool`` prints it)."""
    return resources.files("mtrouter_jax.data").joinpath(DEFAULT_POOL_NAME).read_text()


def default_pool() -> Pool:
    """The embedded six-model pool of the MTRouter paper."""
    return load_pool(None)
