"""Draft-and-escalate: a cheap draft's action type decides whether a turn is re-served (issue 17).

The history features cannot tell when a decisive action is due (docs/benchmarks.md, "Executed
counterfactuals": the estimators separate the turns where a ``focus`` is due with an AUC of
0.46-0.64). The draft can: the router first calls the model its policy chose; if that reply's
action (tool) type is one where the logs show another model significantly better *at that type*,
the draft is discarded (and billed) and the turn is served by that model instead.

"Better at a type" is measured on the turns' own outcomes: a turn's **gain** is the change of the
normalised score it caused (``Turn.progress`` after it, ``meta.initial_score`` before the first),
so a decisive wrong action (a wrong ``focus``, a bad ``submit``) shows as a large negative gain of
the model that typed it. The table holds, per (executed action type, model), the number of logged
turns and the mean and variance of their gains. Escalation is conservative, as the safe router is;
two tests, both over cells with at least ``n_min`` logged turns of that type:

- ``difference`` (the default): the one-sided 95 % lower bound of the difference of the two means
  (Welch, normal quantile 1.645) must clear the floor below: the textbook test that the alternative
  is better;
- ``overlap``: the alternative's 95 % lower bound must exceed the draft model's 95 % upper bound by
  the floor. Non-overlapping intervals are a stricter test than their level says (about 99.4 %
  two-sided for equal standard errors): a row whose intervals touch is never re-served, however
  large its difference (the default until 2026-12-07; docs/benchmarks.md, "The escalation test
  with the floor").

The alternative's gain is read, in these two, from its own turns of the draft's type. The ``due``
tests (``due``: overlap, ``due-difference``: difference; ``DRAFT_TESTS``) read it instead from the
turns where the action *due* — in hindsight, ``routing/due.py`` — was what the draft model's turns of
that type had due: a "look around" drafted where an ``act`` was due is valued at what the
alternative scores when an ``act`` is due. Tables without hindsight due types (older checkpoints)
fall back to the plain test of the same kind.

In all, the advantage must also be worth a second call: the bound must clear ``min_gain`` (default
``DEFAULT_DRAFT_MIN_GAIN``, 1 % of the score range a turn), not just zero. With enough logs every
small per-type difference becomes significant (an `explore` turn of one model 0.001 better than
another's, measured on 1,500 turns each), and escalating the frequent turns of such types drains
the budget before the rare decisive turn: in the `specialists` world the default router's dev score
fell from 85 to 57 between 400 and 800 logged episodes for that reason (docs/benchmarks.md). And
the alternative's worst-case turn must fit the budget that is left after the draft. Where the logs
have no per-turn progress the table is empty and nothing ever escalates.

Pure numpy on tiny (K, M) tables: one decision costs microseconds, no device dispatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mtrouter_jax.core.stats import Z95
from mtrouter_jax.routing.due import DueOutcomes, due_types, fit_due, grouped_moments

DEFAULT_DRAFT_N_MIN = 20  # logged turns of a (type, model) before its mean is trusted
DRAFT_TESTS = ("overlap", "difference", "due", "due-difference")  # how "significantly better at a type" is tested (module docstring)
DEFAULT_DRAFT_TEST = "difference"  # chosen on dev variations of four worlds, with the floor (docs/benchmarks.md, "The escalation test with the floor")
DRAFT_MODES = ("auto", "off") + DRAFT_TESTS  # auto: the default test where a draft could be re-served (can_escalate)
Z95_ONE_SIDED = 1.6448536269514722  # the normal's 95 % quantile
DEFAULT_DRAFT_MIN_GAIN = 0.01  # the least advantage (normalised score a turn) an escalation must be sure of


@dataclass(frozen=True)
class TypeOutcomes:
    """Per (executed action type, model): logged turns ``n``, mean ``mean`` and variance ``var`` of the gain;
    ``due``: the same log by hindsight due type (``routing/due.py``; None in tables fitted before it)."""

    tools: tuple[str, ...]
    models: tuple[str, ...]
    n: np.ndarray  # (K, M) float
    mean: np.ndarray  # (K, M)
    var: np.ndarray  # (K, M)
    due: DueOutcomes | None = None

    def bounds(self, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) normal 95 % bounds of each cell's mean gain (±inf where n < 2)."""
        se = np.sqrt(self.var / np.maximum(self.n, 1.0))
        ok = self.n >= 2
        return np.where(ok, self.mean - z * se, -np.inf), np.where(ok, self.mean + z * se, np.inf)

    def escalations(self, n_min: float = DEFAULT_DRAFT_N_MIN, test: str = DEFAULT_DRAFT_TEST,
                    min_gain: float = DEFAULT_DRAFT_MIN_GAIN) -> dict[str, dict[str, str]]:
        """Readable summary: ``{type: {draft model: escalated model}}`` for every allowed-by-all case
        (``escalation_matrix``)."""
        out: dict[str, dict[str, str]] = {}
        esc = escalation_matrix(self, n_min, test, min_gain)
        for k, d in zip(*np.nonzero(esc >= 0)):
            out.setdefault(self.tools[k], {})[self.models[d]] = self.models[esc[k, d]]
        return out

    @property
    def empty(self) -> bool:
        """No logged turn with a known outcome (logs without per-turn progress): nothing can escalate."""
        return not bool(np.any(self.n > 0))

    def to_meta(self) -> dict:
        out = {"tools": list(self.tools), "models": list(self.models), "n": self.n.tolist(),
               "mean": self.mean.tolist(), "var": self.var.tolist()}
        if self.due is not None:
            out["due"] = self.due.to_meta()
        return out

    @classmethod
    def from_meta(cls, d: dict) -> "TypeOutcomes":
        return cls(tuple(d["tools"]), tuple(d["models"]), np.asarray(d["n"], np.float64),
                   np.asarray(d["mean"], np.float64), np.asarray(d["var"], np.float64),
                   DueOutcomes.from_meta(d["due"]) if d.get("due") else None)


def turn_gains(progress: Sequence[float | None], start: float, lo: float, hi: float) -> np.ndarray | None:
    """(T,) normalised score change of each turn (``progress``: the score after each turn); None when
    any turn lacks its progress (the turn's own outcome is then unknown)."""
    if not progress or any(p is None for p in progress):
        return None
    after = (np.asarray(progress, np.float64) - lo) / (hi - lo)
    before = np.r_[(float(start) - lo) / (hi - lo), after[:-1]]
    return after - before


def episode_gains(episode, default_range: Sequence[float] = (-100.0, 100.0)) -> np.ndarray | None:
    """``turn_gains`` of a logged episode, in its score range (``default_range`` without one) from its
    ``meta.initial_score`` (the range's low end without one)."""
    lo, hi = episode.score_range or default_range
    return turn_gains([t.progress for t in episode.turns], float((episode.meta or {}).get("initial_score", lo)), lo, hi)


def _turn_keys(tools: Sequence[str], models: Sequence[str]):
    """turn -> (its type index, an unknown type counting as the vocabulary's last, "other"-like entry;
    its model index, None for a model outside ``models``)."""
    pos = {t: i for i, t in enumerate(tools)}
    mpos = {m: i for i, m in enumerate(models)}
    other = len(tools) - 1
    return lambda t: (pos.get(t.tool, other), mpos.get(t.model))


def fit_table(tool_idx: np.ndarray, model_idx: np.ndarray, gains: np.ndarray, tools: Sequence[str],
              models: Sequence[str], due_idx: np.ndarray | None = None) -> TypeOutcomes:
    """The table of per-turn ``gains`` grouped by (``tool_idx``, ``model_idx``), all (N,) arrays; with
    ``due_idx`` (hindsight due types, ``routing/due.py``) also by due type."""
    K, M = len(tools), len(models)
    n, mean, var = grouped_moments(tool_idx, model_idx, gains, K, M)
    due = None if due_idx is None else fit_due(tool_idx, due_idx, model_idx, gains, K, M)
    return TypeOutcomes(tuple(tools), tuple(models), n, mean, var, due)


def fit_type_outcomes(episodes, tools: Sequence[str], models: Sequence[str],
                   default_range: Sequence[float] = (-100.0, 100.0)) -> TypeOutcomes:
    """The table of logged ``episodes``: every turn with a known progress, by its executed type
    (``Turn.tool``; an unknown type counts as the vocabulary's last, "other"-like entry) and model,
    and by its hindsight due type (``routing/due.py``)."""
    keys = _turn_keys(tools, models)
    ti, mi, g, di = [], [], [], []
    for e in episodes:
        if (e.meta or {}).get("branch_of") is not None:  # a branch's replayed prefix is its base's turns
            turns = [t for t in e.turns if not (t.meta or {}).get("replayed")]
        else:
            turns = list(e.turns)
        gains = episode_gains(e, default_range)
        if gains is None:
            continue
        # due types from the whole episode (a branch's replayed prefix included): a turn's label is
        # the type of the next score change, which may come after it
        due = due_types(np.array([keys(t)[0] for t in e.turns], np.int64), np.nan_to_num(gains), len(tools))
        skip = len(e.turns) - len(turns)
        for t, x, d in zip(turns, gains[skip:], due[skip:]):
            k, m = keys(t)
            if m is None or not math.isfinite(x):
                continue
            ti.append(k)
            mi.append(m)
            g.append(x)
            di.append(d)
    return fit_table(np.asarray(ti, np.int64), np.asarray(mi, np.int64), np.asarray(g, np.float64), tools, models,
                     np.asarray(di, np.int64))


def escalation_matrix(table: TypeOutcomes, n_min: float = DEFAULT_DRAFT_N_MIN, test: str = DEFAULT_DRAFT_TEST,
                      min_gain: float = DEFAULT_DRAFT_MIN_GAIN) -> np.ndarray:
    """(K, M) int: the model that re-serves a draft of each (type, draft model) with every model
    affordable (``draft_escalation``), -1 where none does."""
    every = np.ones(len(table.models), bool)
    return np.array([[draft_escalation(table, k, d, every, n_min, test, min_gain) for d in range(len(table.models))]
                     for k in range(len(table.tools))], np.int64).reshape(len(table.tools), len(table.models))


def drafted_value_change(episode, table: TypeOutcomes, esc: np.ndarray,
                         default_range: Sequence[float] = (-100.0, 100.0), budget: float = math.inf,
                         turn_cost: np.ndarray | None = None, worst_cost=None) -> float:
    """How drafting would have changed ``episode``'s normalised score, by per-turn substitution: every
    turn whose (type, model) is re-served (``esc``, ``escalation_matrix``) has its own gain replaced
    by the re-serving model's mean gain at that type; 0 without per-turn progress. A wrong ``focus``
    that ended the episode is replaced by the specialist's mean ``focus`` gain, but the turns a
    longer episode would have had after it are not added: the estimate leans low where drafting
    saves an episode.

    Under a ``budget``, as the live gate (``live.draft.escalate_draft``) decides: a turn is re-served
    only where the spend so far (the logged turns, each re-served one with ``turn_cost[k, d]`` added),
    the draft, and the re-serving model's worst-case turn (``worst_cost(prompt tokens, model index)``;
    none: 0) fit the budget."""
    gains = episode_gains(episode, default_range)
    if gains is None:
        return 0.0
    keys = _turn_keys(table.tools, table.models)
    change, spent = 0.0, 0.0
    for t, g in zip(episode.turns, gains):
        k, d = keys(t)
        spent += t.cost
        if d is None or not math.isfinite(g) or esc[k, d] < 0:
            continue
        j = int(esc[k, d])
        if math.isfinite(budget) and spent + (worst_cost(t.input_tokens, j) if worst_cost else 0.0) > budget:
            continue
        change += float(table.mean[k, j]) - float(g)
        spent += 0.0 if turn_cost is None else float(turn_cost[k, d])
    return change


def escalation_turn_costs(episodes, esc: np.ndarray, tools: Sequence[str], models: Sequence[str]) -> np.ndarray:
    """(K, M) USD: what drafting adds to a turn of each (type, draft model): the re-serving model's
    mean logged cost of a turn of that type (the draft itself is the turn the log already bills);
    0 where the draft is kept."""
    keys = _turn_keys(tools, models)
    K, M = len(tools), len(models)
    total, n = np.zeros((K, M)), np.zeros((K, M))
    for e in episodes:
        for t in e.turns:
            k, d = keys(t)
            if d is not None:
                total[k, d] += t.cost
                n[k, d] += 1
    mean = total / np.maximum(n, 1)
    out = np.zeros((K, M))
    k_idx, d_idx = np.nonzero(esc >= 0)
    out[k_idx, d_idx] = mean[k_idx, esc[k_idx, d_idx]]
    return out


def draft_pricing(episodes, table: TypeOutcomes, pool, output_tokens_hi: Sequence[float],
                  default_range: Sequence[float] = (-100.0, 100.0), n_min: float = DEFAULT_DRAFT_N_MIN,
                  test: str = DEFAULT_DRAFT_TEST):
    """``reference.DraftPricing`` of the logs under the default escalation settings (what a drafting
    router's reference choice reads), or None where nothing could be re-served (no router drafts).
    ``pool`` prices the table's models; ``output_tokens_hi`` (M,) is the completion a worst-case turn
    assumes (the checkpoint's ``output_tokens_hi``, as the live gate)."""
    from mtrouter_jax.core.pricing import call_cost
    from mtrouter_jax.routing.reference import DraftPricing

    if not can_escalate(table, n_min, test):
        return None
    esc = escalation_matrix(table, n_min, test)
    extra = escalation_turn_costs(episodes, esc, table.tools, table.models)
    prices = np.array([[pool[m].price_input, pool[m].price_output] for m in table.models], np.float64) / 1e6
    hi = np.asarray(output_tokens_hi, np.float64)

    def worst(prompt: float, j: int) -> float:  # a cold call: the re-serving model did not serve the turn before
        return float(call_cost(prompt, 0.0, hi[j], prices[j, 0], 0.0, prices[j, 1]))

    keys = _turn_keys(table.tools, table.models)
    budget_hi = 0.0
    for e in episodes:  # each episode's spend with every re-served turn, and its worst re-served call on top
        escalated = [(t, k, d) for t in e.turns for k, d in [keys(t)] if d is not None and esc[k, d] >= 0]
        total = sum(t.cost for t in e.turns) + sum(extra[k, d] for _, k, d in escalated)
        budget_hi = max(budget_hi, total + max((worst(t.input_tokens, int(esc[k, d])) for t, k, d in escalated),
                                               default=0.0))
    return DraftPricing(lambda e, budget: drafted_value_change(e, table, esc, default_range, budget, extra, worst),
                        test, float(n_min), float(budget_hi))


def draft_table_for(meta: dict | None, table: TypeOutcomes | None, tools: Sequence[str],
                    models: Sequence[str], required: bool = True) -> TypeOutcomes | None:
    """The table a draft router uses: ``table``, else the checkpoint's ``meta.type_outcomes``; it must be
    over the router's tool vocabulary and pool (ValueError otherwise, or when there is none). Not
    ``required`` (``--draft auto``): None instead of an error (an empty table is returned as is:
    ``can_escalate`` says it cannot be used)."""
    if table is None and (meta or {}).get("type_outcomes"):
        table = TypeOutcomes.from_meta(meta["type_outcomes"])
    if not required:
        ok = table is not None and tuple(table.tools) == tuple(tools) and tuple(table.models) == tuple(models)
        return table if ok else None
    if table is None:
        raise ValueError("draft routing needs per-(action type, model) turn outcomes: a checkpoint trained by "
                         "this version of `mtrouter train` (older ones lack meta.type_outcomes)")
    if tuple(table.tools) != tuple(tools) or tuple(table.models) != tuple(models):
        raise ValueError(f"type outcomes over tools {list(table.tools)} and models {list(table.models)} do not "
                         f"match the router's {list(tools)} / {list(models)}")
    return table


def can_escalate(table: TypeOutcomes | None, n_min: float = DEFAULT_DRAFT_N_MIN,
                 test: str = DEFAULT_DRAFT_TEST) -> bool:
    """Whether some draft could ever be re-served (with every model affordable): ``auto`` drafts only
    then, so a router whose logs vouch for no per-type specialist never pays for a draft it cannot use."""
    return table is not None and not table.empty and bool(table.escalations(n_min, test))


def resolve_draft(draft: bool | str | None) -> tuple[str, str]:
    """(mode, test) of a ``draft`` option: mode ``off``, ``auto`` (draft where a draft could be
    re-served, ``can_escalate``) or ``on`` (the table must exist); ``test`` the escalation test. True
    means the default test; False/None, ``off``. A ``RouterSpecError`` naming the choices otherwise."""
    if draft is None or draft is False or draft == "off":
        return "off", DEFAULT_DRAFT_TEST
    if draft is True:
        return "on", DEFAULT_DRAFT_TEST
    if draft == "auto":
        return "auto", DEFAULT_DRAFT_TEST
    if draft in DRAFT_TESTS:
        return "on", str(draft)
    from mtrouter_jax.routing.specs import RouterSpecError  # a ValueError naming the flag

    raise RouterSpecError(f"unknown draft mode {draft!r}: use one of {', '.join(DRAFT_MODES)}", "--draft")


def draft_setup(draft: bool | str | None, meta: dict | None, table: TypeOutcomes | None, tools: Sequence[str],
                models: Sequence[str], n_min: float = DEFAULT_DRAFT_N_MIN) -> tuple[TypeOutcomes | None, str]:
    """(table, test) of a router's ``draft`` option (``resolve_draft``): no table when off, or when
    ``auto`` finds none that could escalate; ``on`` requires one (``draft_table_for``'s ValueError)."""
    mode, test = resolve_draft(draft)
    t = None if mode == "off" else draft_table_for(meta, table, tools, models, mode == "on")
    return (t if mode != "auto" or can_escalate(t, n_min, test) else None), test


def check_draft_test(test: str) -> str:
    """``test`` if it names one of ``DRAFT_TESTS`` (ValueError naming them otherwise)."""
    if test not in DRAFT_TESTS:
        raise ValueError(f"unknown draft escalation test {test!r}: use one of {', '.join(DRAFT_TESTS)}")
    return test


def draft_escalation(table: TypeOutcomes, tool: int, draft: int, allowed: np.ndarray,
                      n_min: float = DEFAULT_DRAFT_N_MIN, test: str = DEFAULT_DRAFT_TEST,
                      min_gain: float = DEFAULT_DRAFT_MIN_GAIN) -> int:
    """The model to re-serve a turn whose draft (by model ``draft``) has action type ``tool``, or -1.

    Among ``allowed`` models with ``n_min`` logged turns of that type (``due`` tests: of every due type
    behind the draft's), the one whose advantage over the draft model (which needs ``n_min`` turns of
    the type too) has the best lower bound, if the ``test`` (module docstring) says it is better by
    more than ``min_gain``."""
    check_draft_test(test)
    if not 0 <= tool < len(table.tools) or table.n[tool, draft] < n_min:
        return -1
    due = test.startswith("due") and table.due is not None
    if due:
        value, var, known = table.due.alternative_values(tool, draft, n_min)
    else:
        value, var, known = table.mean[tool], table.var[tool] / np.maximum(table.n[tool], 1.0), table.n[tool] >= n_min
    cand = np.asarray(allowed, bool) & known
    cand[draft] = False
    if not cand.any():
        return -1
    if test in ("overlap", "due"):  # a cell of one turn has no interval: it never passes this test
        lcb_cells, ucb_cells = table.bounds()
        lcb = value - Z95 * np.sqrt(var) if due else lcb_cells[tool]
        j = int(np.argmax(np.where(cand, lcb, -np.inf)))
        return j if lcb[j] - ucb_cells[tool, draft] > min_gain else -1
    own_var = table.var[tool, draft] / max(table.n[tool, draft], 1.0)
    lower = value - table.mean[tool, draft] - Z95_ONE_SIDED * np.sqrt(var + own_var)
    j = int(np.argmax(np.where(cand, lower, -np.inf)))
    return j if lower[j] > min_gain else -1


__all__ = ["TypeOutcomes", "draft_table_for", "episode_gains", "escalation_matrix", "drafted_value_change", "escalation_turn_costs",
           "draft_pricing", "turn_gains", "fit_table", "fit_type_outcomes", "draft_escalation",
           "check_draft_test", "resolve_draft", "can_escalate", "draft_setup", "DEFAULT_DRAFT_N_MIN",
           "DEFAULT_DRAFT_MIN_GAIN", "DRAFT_TESTS", "DRAFT_MODES", "DEFAULT_DRAFT_TEST", "Z95_ONE_SIDED"]
