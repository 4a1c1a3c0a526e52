"""Canary and shadow arms of the proxy (issue 19): a candidate checkpoint tried on live traffic.

* ``--canary CKPT:FRACTION``: that share of **new** conversations routes with the candidate. The
  arm is a function of the episode id and ``serve --seed`` (``arm_of``: a keyed hash against
  FRACTION, no global RNG), so the same ids get the same arms on every replica and restart. The
  episode's ``meta.arm`` is ``canary`` or ``control`` and ``meta.checkpoint`` the digest it routed
  with; the arm travels with the conversation's stored state (``--state``).
* ``--shadow CKPT``: every conversation has a mirrored ``LiveEpisode`` of the candidate (same
  episode id, budget, λ and seed; its target policy, never exploration) fed the same turns and
  observations. On every routed turn its decision on the same history is logged in the turn's
  ``meta.shadow`` (``model``, ``digest``, ``propensity``); it is never served and never billed. A
  shadow that raises logs ``meta.shadow.error`` (the served turn is unaffected, counted in
  ``mtrouter_shadow_failures``); one that cannot be mirrored any more (a failed record, a hand-over
  from a replica without it) logs ``meta.shadow.missing`` from then on rather than a wrong decision.

``mtrouter compare-arms`` (``reporting/arms.py``) reads what is logged here.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.live.draft import bill_draft
from mtrouter_jax.live.episode_state import EpisodeStateError, episode_state, restore_episode
from mtrouter_jax.live.router import BudgetExhausted, Router
from mtrouter_jax.live.server.reload import stamp

if TYPE_CHECKING:
    from mtrouter_jax.live.episode import LiveEpisode

log = logging.getLogger("mtrouter_jax.live")
CANARY, CONTROL = "canary", "control"


def arm_of(episode_id: str, seed: int, fraction: float) -> str:
    """``canary`` for a ``fraction`` share of episode ids (a keyed hash of the id and the seed), else ``control``."""
    h = hashlib.blake2b(f"{int(seed)}:{episode_id}".encode("utf-8", "surrogatepass"), digest_size=8,
                        person=b"mtr-canary")
    return CANARY if int.from_bytes(h.digest(), "big") / 2.0**64 < fraction else CONTROL


def parse_canary(text: str) -> tuple[str, float]:
    """``--canary CKPT:FRACTION`` -> (path, fraction in (0, 1)); raises UsageError naming the flag."""
    path, sep, frac = str(text).rpartition(":")
    try:
        f = float(frac) if sep and path else math.nan
    except ValueError:
        f = math.nan
    if not sep or not path:
        raise UsageError(f"--canary: expected CKPT:FRACTION (e.g. ckpt2/:0.1), got {text!r}")
    if not 0.0 < f < 1.0:
        raise UsageError(f"--canary: FRACTION must be a number in (0, 1), got {frac!r} in {text!r}")
    return path, f


def same_pool(a: Router, b: Router) -> bool:
    """Same model names, in order, at the same prices (both arms bill a turn alike)."""
    return (tuple(a.pool.names) == tuple(b.pool.names) and np.array_equal(a.price_in, b.price_in)
            and np.array_equal(a.price_cached, b.price_cached) and np.array_equal(a.price_out, b.price_out))


def check_flags(canary: str | None, shadow: str | None) -> tuple[tuple[str, float] | None, str | None]:
    """``--canary`` / ``--shadow`` checked before anything is built: ((path, fraction) or None, path or None)."""
    can = parse_canary(canary) if canary else None
    for flag, path in (("--canary", can and can[0]), ("--shadow", shadow)):
        if path and not Path(path).exists():
            raise UsageError(f"{flag}: no checkpoint at {path}")
    return can, (str(shadow) if shadow else None)


def load_candidate(flag: str, path: str, build: Callable[[str], Router], served: Router) -> Router:
    """The candidate router of ``--canary`` / ``--shadow`` (verified on load, as a reload); UsageError
    naming ``flag`` when it is damaged or routes over another pool."""
    from mtrouter_jax.estimator.integrity import CheckpointError

    try:
        r = build(path)
    except (CheckpointError, OSError, ValueError, KeyError) as e:
        why = " ".join(str(e).split())  # one line (an integrity report lists a file per line)
        raise UsageError(f"{flag}: checkpoint {path} cannot be used ({type(e).__name__}: {why})") from None
    if not same_pool(r, served):
        raise UsageError(f"{flag}: checkpoint {path} routes over {list(r.pool.names)} (or at other prices) and the "
                         f"proxy over {list(served.pool.names)}; give both the same --pool")
    return stamp(r)


@dataclass
class Arms:
    """The candidate routers of a proxy (none: every conversation on the served router, as before)."""

    canary: Router | None = None
    fraction: float = 0.0
    shadow: Router | None = None
    seed: int = 0  # serve --seed: keys the arm hash
    on_failure: Callable[[str], None] | None = None  # metrics: a shadow failure, by stage

    def pinned(self) -> set:
        """Digests a reload must never evict from ``Proxy.routers`` (conversations on the canary)."""
        return {getattr(self.canary, "digest", None)} if self.canary is not None else set()

    def start(self, control: Router, eid: str, task, budget, lam, explore: bool, seed) -> "LiveEpisode":
        """A new episode ``eid`` on its arm's router, with its shadow when there is one."""
        arm = arm_of(eid, self.seed, self.fraction) if self.canary is not None else None
        router = self.canary if arm == CANARY else control
        ep = router.start_episode(eid, task, budget, lam, explore=explore, seed=seed)
        ep.arm = arm
        if self.shadow is not None:
            ep.shadow = self.shadow.start_episode(eid, ep.task_type, ep.budget, ep.lam, explore=False, seed=ep.seed)
        return ep

    def describe(self) -> dict:
        out: dict = {}
        if self.canary is not None:
            out["canary"] = {"digest": getattr(self.canary, "digest", None), "fraction": self.fraction,
                             "checkpoint": getattr(self.canary, "checkpoint_path", None)}
        if self.shadow is not None:
            out["shadow"] = {"digest": getattr(self.shadow, "digest", None),
                             "checkpoint": getattr(self.shadow, "checkpoint_path", None)}
        return out

    # ------------------------------------------------------------------ the mirrored episode
    def _fail(self, ep: "LiveEpisode", stage: str, e: BaseException, drop: bool) -> dict:
        log.warning("episode %s: the shadow failed to %s (%s: %s)%s", ep.episode_id, stage, type(e).__name__, e,
                    "; it is no longer mirrored" if drop else "")
        if self.on_failure is not None:
            self.on_failure(stage)
        if drop:
            ep.shadow, ep.shadow_missing = None, f"{stage} failed: {type(e).__name__}"
        return {"digest": getattr(self.shadow, "digest", None), "error": f"{type(e).__name__}: {e}"[:300]}

    def decide(self, ep: "LiveEpisode", hi, est, lam) -> dict | None:
        """The shadow's decision on this turn's history (the turn's ``meta.shadow``); None without a shadow."""
        if self.shadow is None:
            return None
        digest = getattr(self.shadow, "digest", None)
        sh = ep.shadow
        if sh is None:
            return {"digest": digest, "missing": ep.shadow_missing or "not mirrored"}
        try:
            d = sh.decide(input_tokens_hi=hi, context_tokens=est, lam=lam)
        except BudgetExhausted as e:  # the candidate finds no model that fits (nor should the served one)
            return {"digest": digest, "model": None, "error": f"BudgetExhausted: {e}"[:300]}
        except Exception as e:  # noqa: BLE001 - a shadow never fails the served turn
            return self._fail(ep, "decide", e, drop=False)
        return {"model": d.model, "digest": digest, "propensity": round(float(d.propensity), 7)}

    def record(self, ep: "LiveEpisode", model: str, usage, tool, action) -> None:
        """Mirror the served turn (as billed, a re-served draft's bill included) into the shadow's history."""
        if ep.shadow is not None:
            try:
                draft = (ep.turns[-1].meta or {}).get("draft") if ep.turns else None
                if draft is not None:  # the served turn paid for a draft too: so does its mirror
                    bill_draft(ep.shadow, dict(draft))
                ep.shadow.record(model, usage, tool_name=tool, action=action, propensity=None)
            except Exception as e:  # noqa: BLE001
                self._fail(ep, "record", e, drop=True)

    def observe(self, ep: "LiveEpisode", text: str) -> None:
        """Mirror the previous turn's observation."""
        if ep.shadow is not None:
            try:
                ep.shadow.attach_observation(text)
            except Exception as e:  # noqa: BLE001
                self._fail(ep, "observe", e, drop=True)

    # ------------------------------------------------------------------ with --state
    def shadow_doc(self, ep: "LiveEpisode") -> dict | None:
        """The shadow's part of the conversation's stored state."""
        if self.shadow is None:
            return None
        if ep.shadow is None:
            return {"missing": ep.shadow_missing or "not mirrored"}
        return {"digest": getattr(self.shadow, "digest", None), "episode": episode_state(ep.shadow)}

    def adopt(self, ep: "LiveEpisode", doc: dict | None) -> None:
        """Restore the shadow of a conversation taken from the store (another replica's turn), or say
        why it cannot be (then its turns log ``meta.shadow.missing``)."""
        ep.shadow = None
        if self.shadow is None:
            return
        digest = getattr(self.shadow, "digest", None)
        if doc is None:
            ep.shadow_missing = "not mirrored from the conversation's start (a replica without this --shadow)"
        elif "missing" in doc:
            ep.shadow_missing = doc["missing"]
        elif doc.get("digest") != digest:
            ep.shadow_missing = f"mirrored with checkpoint {doc.get('digest')}, this replica shadows {digest}"
        else:
            try:
                ep.shadow = restore_episode(self.shadow, doc["episode"])
            except (EpisodeStateError, KeyError, TypeError, ValueError) as e:
                ep.shadow_missing = f"stored shadow not restorable: {e}"[:300]


def setup_arms(canary: tuple[str, float] | None, shadow: str | None, build: Callable[[str], Router],
               served: Router) -> Arms:
    """``serve``'s checked ``--canary`` / ``--shadow`` (``check_flags``) -> ``Arms`` (UsageError on bad input)."""
    arms = Arms(seed=served.seed)
    stamp(served)
    if canary:
        arms.canary, arms.fraction = load_candidate("--canary", canary[0], build, served), canary[1]
    if shadow:
        arms.shadow = load_candidate("--shadow", shadow, build, served)
    return arms


__all__ = ["Arms", "arm_of", "parse_canary", "check_flags", "same_pool", "load_candidate", "setup_arms", "CANARY", "CONTROL"]
