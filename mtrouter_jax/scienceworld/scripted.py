"""A scripted stand-in for LLMs on real ScienceWorld (tests, demos, calibration).

Each model "plays" ScienceWorld's gold action sequence with per-model, per-action-type mistake
rates from ``data/scienceworld_profiles.toml``: a reply may carry no command (format error), a
garbled command the parser rejects, a wasted but harmless command ("look around", "inventory",
"look at <object in view>"), or, when a ``focus on`` is due, a focus on a wrong object (the task
fails at -100). Otherwise it types the gold command due. The profiles are a stand-in, not a model
of any real LLM.

Replies are deterministic in (seed, episode id, step): the same draws decide every model's reply
at a given step (common random numbers), so single-model comparisons are paired.
"""

from __future__ import annotations

import math
import tomllib
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .agent import action_type, cached_prefix_tokens, estimate_tokens, format_action, prompt_tokens
from .session import Session, normalise

PROFILES_FILE = "scienceworld_profiles.toml"
# Frozen worlds of scripted agents (--profiles NAME; docs/scienceworld.md#worlds): each file was frozen
# before any router was trained on it; tests/scienceworld/test_worlds.py pins their digests.
WORLDS = {
    "paper": PROFILES_FILE,  # calibrated to the paper's ranking: gpt-5 best at almost everything
    "specialists": "scienceworld_world_specialists.toml",  # a different best model per action type
    "inverted": "scienceworld_world_inverted.toml",  # the tool-type napkin mapping is wrong
    "holdout": "scienceworld_world_holdout.toml",  # no default chosen on it: how the recipe carries over
}
ACTION_TYPES = ("explore", "navigate", "act", "focus", "other")  # types gold commands have
MISTAKES = ("no_action", "invalid", "wasted")  # per action type; wrong_focus is per focus step
_FIELDS = {"output_tokens", "output_spread", "reasoning", "wrong_focus", *MISTAKES}


class ProfileError(ValueError):
    """A profile file is invalid or lacks a model; the message names file, model and field."""


@dataclass(frozen=True)
class AgentProfile:
    """Mistake rates and reply length of one scripted model (see the profile file's comments)."""

    name: str
    no_action: Mapping[str, float]  # action type -> P(reply without exactly one command)
    invalid: Mapping[str, float]  # action type -> P(garbled command: "No known action ...")
    wasted: Mapping[str, float]  # action type -> P(harmless command that does not progress)
    wrong_focus: float  # P(focus on a wrong object | a "focus on" is due)
    output_tokens: float  # mean completion tokens per reply, hidden reasoning included
    output_spread: float  # sigma of the log-normal spread of completion tokens
    reasoning: bool  # completion tokens beyond the visible reply are reported as reasoning tokens


def _prob(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ProfileError(f"{where}: expected a probability in [0, 1], got {v!r}")
    return float(v)


def _parse_profile(where: str, name: str, d: Any) -> AgentProfile:
    w = f"{where}: model.{name}"
    if not isinstance(d, Mapping):
        raise ProfileError(f"{w}: expected a table, got {type(d).__name__}")
    extra, missing = set(d) - _FIELDS, _FIELDS - set(d)
    if extra:
        raise ProfileError(f"{w}.{sorted(extra)[0]}: unknown field (expected {', '.join(sorted(_FIELDS))})")
    if missing:
        raise ProfileError(f"{w}.{sorted(missing)[0]}: missing required field")
    tables = {}
    for m in MISTAKES:
        t = d[m]
        if not isinstance(t, Mapping):
            raise ProfileError(f"{w}.{m}: expected a table of action type -> probability "
                               f"({', '.join(ACTION_TYPES)})")
        bad = sorted(set(t) ^ set(ACTION_TYPES))
        if bad:
            raise ProfileError(f"{w}.{m}.{bad[0]}: {'unknown' if bad[0] in t else 'missing'} action type "
                               f"(expected exactly {', '.join(ACTION_TYPES)})")
        tables[m] = {k: _prob(f"{w}.{m}.{k}", t[k]) for k in ACTION_TYPES}
    wrong_focus = _prob(f"{w}.wrong_focus", d["wrong_focus"])
    for k in ACTION_TYPES:
        total = sum(tables[m][k] for m in MISTAKES) + (wrong_focus if k == "focus" else 0.0)
        if total > 1.0 + 1e-9:
            raise ProfileError(f"{w}: mistake probabilities for {k!r} sum to {total:.3f} > 1")
    tok, spread = d["output_tokens"], d["output_spread"]
    if isinstance(tok, bool) or not isinstance(tok, (int, float)) or not tok >= 1:
        raise ProfileError(f"{w}.output_tokens: expected a number >= 1, got {tok!r}")
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not 0 <= spread <= 2:
        raise ProfileError(f"{w}.output_spread: expected a number in [0, 2], got {spread!r}")
    if not isinstance(d["reasoning"], bool):
        raise ProfileError(f"{w}.reasoning: expected true or false, got {d['reasoning']!r}")
    return AgentProfile(name, tables["no_action"], tables["invalid"], tables["wasted"], wrong_focus,
                        float(tok), float(spread), d["reasoning"])


def load_profiles(path: str | Path | None = None, models: Iterable[str] | None = None) -> dict[str, AgentProfile]:
    """Read and validate a profile file: a path, a world name of ``WORLDS`` or None (the "paper"
    world); ``models`` must all be in it."""
    if path is None or str(path) in WORLDS:
        name = WORLDS[str(path or "paper")]
        where, text = f"<embedded {name}>", resources.files("mtrouter_jax.data").joinpath(name).read_text()
    else:
        if not Path(path).is_file():
            raise ProfileError(f"--profiles {path}: no such file, and not a world (worlds: {', '.join(WORLDS)})")
        where, text = str(path), Path(path).read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{where}: not valid TOML: {e}") from None
    table = data.get("model")
    if not isinstance(table, Mapping) or not table:
        raise ProfileError(f"{where}: model: expected [model.\"<name>\"] tables")
    profiles = {name: _parse_profile(where, name, d) for name, d in table.items()}
    missing = [m for m in (models or ()) if m not in profiles]
    if missing:
        raise ProfileError(f"{where}: no profile for model(s) {', '.join(map(repr, missing))} "
                           f"(profiles exist for: {', '.join(profiles)})")
    return profiles


def visible_objects(look_text: str) -> list[str]:
    """Object names in a ``look around`` text, as commands can name them ("door to kitchen"), sorted:
    ScienceWorld lists a room's objects in an order that varies from run to run, and a scripted
    mistake indexes this list with its random draw, so the same seed must see the same list."""
    out = []
    for line in look_text.split("\n"):
        if not line.startswith("\t") or line.startswith("\t\t"):
            continue
        s = line.strip()
        low = s.lower()
        if low.startswith("the agent"):
            continue
        for prefix in ("a substance called ", "an ", "a ", "the "):
            if low.startswith(prefix):
                s, low = s[len(prefix):], low[len(prefix):]
                break
        name = s.replace("door to the ", "door to ")
        for stop in (" (", ".", ","):
            name = name.split(stop)[0]
        if name.strip() and len(name.split()) <= 5:
            out.append(name.strip())
    return sorted(out)


def garble(command: str, u: float) -> str:
    """A typo in the command's verb, so ScienceWorld's parser rejects it (``u`` in [0, 1) picks it)."""
    words = command.split()
    w = words[0] if words else "look"
    if w.isdigit():
        w = f"option {w}"  # a non-number at a choice prompt: "Unknown action."
    elif len(w) >= 3 and any(a != b for a, b in zip(w, w[1:])):
        spots = [i for i in range(len(w) - 1) if w[i] != w[i + 1]]
        i = spots[min(int(u * len(spots)), len(spots) - 1)]
        w = w[:i] + w[i + 1] + w[i] + w[i + 2:]  # swap two letters: "pick" -> "pcik"
    else:
        w = w[::-1] if len(w) == 2 else w + w[-1]  # "go" -> "og"
    return " ".join([w, *words[1:]])


_THOUGHTS = {
    "explore": "Let me look more closely before acting.",
    "navigate": "The next step of the task happens elsewhere, so I move there.",
    "act": "This brings the task forward.",
    "focus": "This is the object the task is about, so I focus on it.",
    "other": "I answer the environment's question.",
    "wasted": "Let me check my surroundings again.",
}


def _seed_key(x: int | str) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else zlib.crc32(str(x).encode())


class ScriptedBackend:
    """Scripted chat backend: ``complete(model, messages, episode) -> (reply text, usage)``.

    Args:
        profiles: model name -> :class:`AgentProfile` (``load_profiles()``).
        seed: base seed; replies depend only on (seed, episode id, step, model) — and on which call of
            the step it is: a second call in one step draws independently of the first.
    """

    def __init__(self, profiles: Mapping[str, AgentProfile], seed: int = 0):
        self.profiles = dict(profiles)
        self.seed = int(seed)

    @classmethod
    def from_file(cls, path: str | Path | None = None, *, seed: int = 0,
                  models: Iterable[str] | None = None) -> "ScriptedBackend":
        """Backend over a profile file (None: embedded), checking that ``models`` have profiles."""
        return cls(load_profiles(path, models), seed)

    def complete(self, model: str, messages: list[dict], session: Session, max_tokens: int | None = None
                 ) -> tuple[str, dict]:
        """Reply as ``model`` to ``messages`` in ``session`` (which the backend may read privileged).

        ``max_tokens`` caps the completion as a real endpoint does: a reply that would be longer is
        cut off at the cap before it reaches its command (an empty reply: a format error)."""
        prof = self.profiles.get(model)
        if prof is None:
            raise ProfileError(f"no scripted profile for model {model!r} (have: {', '.join(self.profiles)})")
        # the first call of each step draws from (seed, episode, step): common random numbers across
        # routers. A further call in the same step (a draft's escalation, routing/draft.py) draws
        # afresh: another model's reply is a new sample, not the first call's luck replayed.
        step, n = session.scratch.get("scripted_calls", (None, -1))
        n = n + 1 if step == session.steps else 0
        session.scratch["scripted_calls"] = (session.steps, n)
        key = [self.seed, _seed_key(session.episode_id), session.steps] + ([n] if n else [])
        rng = np.random.default_rng(key)
        u = rng.random(4)  # mistake, variant, object, spare; fixed order: common random numbers
        z = float(rng.standard_normal())
        text = self._reply(prof, session, u)
        usage = self._usage(prof, model, messages, session, text, z)
        if max_tokens is not None and usage["completion_tokens"] > max_tokens:
            usage["completion_tokens"] = int(max_tokens)
            usage["total_tokens"] = usage["prompt_tokens"] + int(max_tokens)
            usage["completion_tokens_details"]["reasoning_tokens"] = int(max_tokens)
            text = ""  # the budget cut the reply off while the model was still thinking
        return text, usage

    def note_call(self, model: str, messages: list[dict], session: Session) -> None:
        """A replayed turn (no call made): remember it as the last call, for the prompt cache."""
        session.scratch["scripted_last_call"] = (model, messages)

    # ----------------------------------------------------------------------------- replies
    def _reply(self, prof: AgentProfile, ep: Session, u: np.ndarray) -> str:
        expected = ep.expected_action()
        if expected is None:  # gold path used up (or none): the agent is lost and only looks around
            return self._wasted(ep, None, u)
        t = action_type(expected)
        t = t if t in ACTION_TYPES else "other"
        cuts = np.cumsum([prof.no_action[t], prof.invalid[t], prof.wasted[t],
                          prof.wrong_focus if t == "focus" else 0.0])
        kind = int(np.searchsorted(cuts, u[0], side="right"))
        if kind == 0:  # format error: prose only, two commands, or an unfenced "Action:" line
            variants = (f"I should {expected} next.",
                        f"THOUGHT: two steps at once.\n```\n{expected}\n```\n```\nlook around\n```",
                        f"THOUGHT: {_THOUGHTS[t]}\nAction: {expected}")
            return variants[min(int(u[1] * 3), 2)]
        if kind == 1:
            return format_action(garble(expected, u[1]), _THOUGHTS[t])
        if kind == 2:
            return self._wasted(ep, expected, u)
        if kind == 3:
            target = normalise(expected[len("focus on"):])
            objs = [o for o in visible_objects(ep.look())
                    if normalise(o) not in target and target not in normalise(o)] or ["air"]
            obj = objs[min(int(u[2] * len(objs)), len(objs) - 1)]
            return format_action(f"focus on {obj}", f"The {obj} looks like what the task is about.")
        return format_action(expected, _THOUGHTS[t])

    def _wasted(self, ep: Session, expected: str | None, u: np.ndarray) -> str:
        options = ["look around", "inventory", "task"]
        if u[1] < 0.5:  # half of the wasted steps look at something in view
            options = [f"look at {o}" for o in visible_objects(ep.look())] or options
        options = [o for o in options if expected is None or normalise(o) != normalise(expected)] or ["inventory"]
        return format_action(options[min(int(u[2] * len(options)), len(options) - 1)], _THOUGHTS["wasted"])

    # ----------------------------------------------------------------------------- usage
    def _usage(self, prof: AgentProfile, model: str, messages: list[dict], ep: Session, text: str,
               z: float) -> dict:
        visible = estimate_tokens(text)
        # log-normal with mean output_tokens: exp(sigma z - sigma^2 / 2) has mean 1
        completion = max(visible, round(prof.output_tokens * math.exp(prof.output_spread * z - prof.output_spread ** 2 / 2)))
        prompt = prompt_tokens(messages)
        last = ep.scratch.get("scripted_last_call")  # (model, messages) of the previous turn
        cached = cached_prefix_tokens(last[1], messages) if last and last[0] == model else 0
        ep.scratch["scripted_last_call"] = (model, messages)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": completion - visible if prof.reasoning else 0}}


__all__ = ["WORLDS", "ScriptedBackend", "AgentProfile", "ProfileError", "load_profiles", "visible_objects", "garble",
           "ACTION_TYPES", "MISTAKES", "PROFILES_FILE"]
