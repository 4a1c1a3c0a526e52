"""The real ScienceWorld simulator (PyPI ``scienceworld``, a Scala JVM driven through py4j), wrapped.

One :class:`ScienceWorldEngine` owns one ``ScienceWorldEnv`` and so one JVM: create one per
process. ``scienceworld`` is imported lazily, so :mod:`mtrouter_jax` imports without it.

Speed: ``ScienceWorldEnv.step`` also asks the JVM for every valid action-object combination, the
room, the inventory and the task (~0.2 s per step); :meth:`ScienceWorldEngine.step` calls the
server directly (~3-20 ms). ``load(..., generateGoldPath=True)`` replays the whole gold path in the
JVM (0.1-12 s), so gold sequences are cached per (task, variation) in memory and on disk.
"""

from __future__ import annotations

import atexit
import difflib
import json
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "dev", "test")
# the rows `mtrouter eval scienceworld` always runs (after a checkpoint's serving router: evaluate.default_eval_routers)
DEFAULT_EVAL_BASELINES = "tool-heuristic,fixed:*,error-escalation"
INVALID_ACTION_OBSERVATION = "No known action matches that input."
AMBIGUOUS_PREFIX = "Ambiguous request"  # the JVM then waits for a number ("0", "1", ...)
CANCELLED_CHOICE_PREFIX = "Unknown action."  # a non-number answered to an ambiguity prompt

# (train, dev, test) variation counts per task. ScienceWorld 1.2.3's splits are contiguous:
# train = [0, n_train), dev = the next n_dev, test = the last n_test (checked for all 30 tasks
# with get_variations_train/_dev/_test; the engine re-checks the total on first use).
VARIATION_SPLITS: dict[str, tuple[int, int, int]] = {
    "boil": (14, 7, 9),
    "change-the-state-of-matter-of": (14, 7, 9),
    "chemistry-mix": (16, 8, 8),
    "chemistry-mix-paint-secondary-color": (18, 9, 9),
    "chemistry-mix-paint-tertiary-color": (18, 9, 9),
    "find-animal": (150, 75, 75),
    "find-living-thing": (150, 75, 75),
    "find-non-living-thing": (150, 75, 75),
    "find-plant": (150, 75, 75),
    "freeze": (14, 7, 9),
    "grow-fruit": (62, 31, 33),
    "grow-plant": (62, 31, 33),
    "identify-life-stages-1": (6, 3, 5),
    "identify-life-stages-2": (4, 2, 4),
    "inclined-plane-determine-angle": (84, 42, 42),
    "inclined-plane-friction-named-surfaces": (692, 346, 348),
    "inclined-plane-friction-unnamed-surfaces": (80, 40, 42),
    "lifespan-longest-lived": (62, 31, 32),
    "lifespan-longest-lived-then-shortest-lived": (62, 31, 32),
    "lifespan-shortest-lived": (62, 31, 32),
    "measure-melting-point-known-substance": (218, 109, 109),
    "measure-melting-point-unknown-substance": (150, 75, 75),
    "melt": (14, 7, 9),
    "mendelian-genetics-known-plant": (60, 30, 30),
    "mendelian-genetics-unknown-plant": (240, 120, 120),
    "power-component": (10, 5, 5),
    "power-component-renewable-vs-nonrenewable-energy": (10, 5, 5),
    "test-conductivity": (450, 225, 225),
    "test-conductivity-of-unknown-substances": (300, 150, 150),
    "use-thermometer": (270, 135, 135),
}

# Gold path length (min, median, max) per task, measured once (scienceworld 1.2.3) over 8 evenly
# spaced variations of each split (first and last included; 3 per split for the two mendelian
# tasks and inclined-plane-friction-unnamed-surfaces). Only variation 0 has 27 tasks at <= 80
# steps; across variations dev/test are longer (boil: 28 train .. 170 test).
GOLD_PATH_STATS: dict[str, tuple[int, int, int]] = {
    "boil": (28, 81, 170),
    "change-the-state-of-matter-of": (19, 45, 124),
    "chemistry-mix": (16, 20, 58),
    "chemistry-mix-paint-secondary-color": (7, 16, 27),
    "chemistry-mix-paint-tertiary-color": (13, 22, 33),
    "find-animal": (8, 12, 16),
    "find-living-thing": (8, 12, 16),
    "find-non-living-thing": (3, 7, 11),
    "find-plant": (8, 12, 14),
    "freeze": (25, 67, 137),
    "grow-fruit": (75, 95, 105),
    "grow-plant": (61, 67, 77),
    "identify-life-stages-1": (27, 40, 42),
    "identify-life-stages-2": (10, 16, 17),
    "inclined-plane-determine-angle": (55, 77, 187),
    "inclined-plane-friction-named-surfaces": (45, 70, 770),
    "inclined-plane-friction-unnamed-surfaces": (49, 108, 204),
    "lifespan-longest-lived": (2, 6, 8),
    "lifespan-longest-lived-then-shortest-lived": (3, 7, 9),
    "lifespan-shortest-lived": (2, 6, 8),
    "measure-melting-point-known-substance": (19, 35, 74),
    "measure-melting-point-unknown-substance": (16, 94, 96),
    "melt": (20, 45, 130),
    "mendelian-genetics-known-plant": (142, 148, 150),
    "mendelian-genetics-unknown-plant": (143, 148, 251),
    "power-component": (9, 13, 15),
    "power-component-renewable-vs-nonrenewable-energy": (11, 21, 30),
    "test-conductivity": (15, 27, 49),
    "test-conductivity-of-unknown-substances": (15, 24, 35),
    "use-thermometer": (14, 20, 24),
}

# Tasks whose gold path is <= 80 steps in every measured variation of every split (max column of
# GOLD_PATH_STATS), so a ~100-step limit leaves room for mistakes: 19 of 30 tasks.
DEFAULT_TASKS: tuple[str, ...] = tuple(t for t, (_, _, hi) in GOLD_PATH_STATS.items() if hi <= 80)

TASK_NAMES: tuple[str, ...] = tuple(VARIATION_SPLITS)


class ScienceWorldUnavailable(RuntimeError):
    """Java or the ``scienceworld`` package is missing."""


class ScienceWorldArgumentError(ValueError):
    """A bad task, variation or split."""


class UnknownTaskError(ScienceWorldArgumentError):
    """The task name is not one of ScienceWorld's 30 tasks."""


class VariationError(ScienceWorldArgumentError):
    """The variation is outside the split's range."""


class SplitError(ScienceWorldArgumentError):
    """The split is not train, dev or test."""


def require_java() -> None:
    """Raise :class:`ScienceWorldUnavailable` (saying what to install) unless Java and ScienceWorld exist."""
    missing = []
    if shutil.which("java") is None:
        missing.append("a Java 17 runtime (`java` is not on PATH; e.g. `apt-get install openjdk-17-jre-headless`)")
    try:
        import scienceworld  # noqa: F401
    except ImportError:
        missing.append("the `scienceworld` package (`pip install scienceworld==1.2.3`)")
    if missing:
        raise ScienceWorldUnavailable("ScienceWorld needs " + " and ".join(missing))


def check_task(task: str) -> str:
    """Return ``task`` if it is a ScienceWorld task name, else raise :class:`UnknownTaskError`."""
    if task in VARIATION_SPLITS:
        return task
    close = difflib.get_close_matches(str(task), TASK_NAMES, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise UnknownTaskError(f"unknown ScienceWorld task {task!r}{hint} (tasks: {', '.join(TASK_NAMES)})")


def variations(task: str, split: str = "train") -> range:
    """Variation indices of ``task`` in ``split`` (no JVM needed)."""
    check_task(task)
    if split not in SPLITS:
        raise SplitError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    n_train, n_dev, n_test = VARIATION_SPLITS[task]
    start = {"train": 0, "dev": n_train, "test": n_train + n_dev}[split]
    return range(start, start + {"train": n_train, "dev": n_dev, "test": n_test}[split])


def check_variation(task: str, variation: int, split: str | None = None) -> int:
    """Return ``variation`` if it is in ``split`` (any split when None), else raise :class:`VariationError`."""
    rng = range(sum(VARIATION_SPLITS[check_task(task)])) if split is None else variations(task, split)
    if isinstance(variation, bool) or not isinstance(variation, int) or variation not in rng:
        where = "" if split is None else f" {split}"
        raise VariationError(f"variation {variation!r} is out of range for {task!r}{where}: "
                             f"valid are {rng.start}..{rng.stop - 1}")
    return variation


def default_cache_dir() -> Path:
    """``$MTROUTER_CACHE_DIR``, else ``$XDG_CACHE_HOME/mtrouter_jax``, else ``~/.cache/mtrouter_jax``."""
    if os.environ.get("MTROUTER_CACHE_DIR"):
        return Path(os.environ["MTROUTER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtrouter_jax"


@dataclass(frozen=True)
class EpisodeStart:
    """What :meth:`ScienceWorldEngine.load` returns: the task text and the first observation."""

    task: str
    variation: int
    task_description: str  # "Your task is to boil water. ..."
    observation: str  # answer to "look around", as ScienceWorldEnv.reset() gives it
    score: int  # score after that first step: up to 21 already (chemistry-mix), 0 in most tasks
    gold: tuple[str, ...] | None  # gold action sequence when asked for, else None


@dataclass(frozen=True)
class StepResult:
    """One engine step: observation, score in -100..100, and whether the episode is over."""

    observation: str
    score: int
    done: bool  # task completed, or failed (score < 0, e.g. a wrong "focus on")


def _noop() -> None:
    return None


def _close_at_exit(ref) -> None:
    engine = ref()
    if engine is not None:
        try:
            engine.close()
        except Exception:  # noqa: BLE001 - a JVM already gone needs no shutdown
            pass


class ScienceWorldEngine:
    """One ScienceWorld JVM: load (task, variation), step commands, gold action sequences.

    Args:
        gold_cache: directory of the on-disk gold-sequence cache; ``True`` (default) uses
            ``default_cache_dir()/scienceworld-<version>/gold``, ``None``/``False`` keeps it in memory only.
    """

    def __init__(self, gold_cache: str | Path | bool | None = True):
        require_java()
        import scienceworld

        self.version = scienceworld.__version__
        if gold_cache is True:
            gold_cache = default_cache_dir() / f"scienceworld-{self.version}" / "gold"
        self.gold_cache_dir = Path(gold_cache) if gold_cache else None
        # envStepLimit is irrelevant here (step limits belong to the caller): step() bypasses env.step.
        self._env = scienceworld.ScienceWorldEnv("", envStepLimit=10**9)
        self._server = self._env.server
        # an engine never closed (a gym env dropped at exit) still shuts its JVM down cleanly, before
        # interpreter teardown makes ScienceWorldEnv.__del__ print "Exception ignored in ..."
        atexit.register(_close_at_exit, weakref.ref(self))
        self._gold: dict[tuple[str, int], tuple[str, ...]] = {}
        self._checked: set[str] = set()
        self.task: str | None = None
        self.variation: int | None = None
        self.load_count = 0  # episodes loaded so far: lets an episode notice it was replaced

    # ----------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Shut the JVM down (idempotent)."""
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            try:
                env.close()
            finally:
                # ScienceWorldEnv.__del__ calls close() again, at interpreter teardown too, when py4j's
                # logging is half torn down: make that second call a no-op
                env.close = _noop

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser (the JVM may be gone already)
            pass

    def __enter__(self) -> "ScienceWorldEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------- tasks
    @property
    def tasks(self) -> tuple[str, ...]:
        """All 30 task names."""
        return TASK_NAMES

    @staticmethod
    def variations(task: str, split: str = "train") -> range:
        """Variation indices of ``task`` in ``split``."""
        return variations(task, split)

    def _check(self, task: str, variation: int) -> None:
        check_variation(task, variation)
        if task not in self._checked:  # one py4j call per task: catches another scienceworld version
            n = int(self._server.getTaskMaxVariations(task))
            if n != sum(VARIATION_SPLITS[task]):
                raise RuntimeError(f"scienceworld {self.version}: {task!r} has {n} variations, expected "
                                   f"{sum(VARIATION_SPLITS[task])} (tables measured on 1.2.3)")
            self._checked.add(task)

    # ----------------------------------------------------------------------------- episodes
    def load(self, task: str, variation: int, *, gold: bool = False) -> EpisodeStart:
        """Start a fresh episode of (task, variation); with ``gold`` also return the gold sequence.

        A gold sequence missing from the caches makes the JVM generate it during the load.
        """
        self._check(task, variation)
        seq = self._cached_gold(task, variation) if gold else None
        generate = gold and seq is None
        self._server.load(task, variation, "", generate)
        if generate:
            seq = tuple(str(a) for a in self._server.getGoldActionSequence())
            self._store_gold(task, variation, seq)
        self.task, self.variation = task, variation
        self.load_count += 1
        desc = str(self._server.getTaskDescription())
        # like ScienceWorldEnv.reset(): the first observation is a real "look around" step
        obs = str(self._server.step("look around"))
        return EpisodeStart(task, variation, desc, obs, int(round(100 * self._server.getScore())), seq)

    def step(self, action: str) -> StepResult:
        """Send one command; the score is ScienceWorld's, x100 and rounded (-100..100)."""
        if self.task is None:
            raise RuntimeError("no episode loaded: call load(task, variation) first")
        obs = str(self._server.step(action))
        score = int(round(100 * self._server.getScore()))
        # a failed task (score -100) does not set getCompleted(); ScienceWorldEnv ends it too
        done = bool(self._server.getCompleted()) or score < 0
        return StepResult(obs, score, done)

    def look(self) -> str:
        """The current room's description; a free action (no time passes, no move counted)."""
        return str(self._server.freeActionLook())

    def inventory(self) -> str:
        """The agent's inventory; a free action."""
        return str(self._server.freeActionInventory())

    # ----------------------------------------------------------------------------- gold paths
    def gold_actions(self, task: str, variation: int) -> tuple[str, ...]:
        """Gold action sequence of (task, variation) from the caches, else generated.

        Generating it reloads the JVM, which ends the current episode: prefer
        ``load(task, variation, gold=True)`` during an episode.
        """
        self._check(task, variation)
        seq = self._cached_gold(task, variation)
        if seq is None:
            seq = self.load(task, variation, gold=True).gold
        return seq

    def _gold_path(self, task: str, variation: int) -> Path | None:
        return None if self.gold_cache_dir is None else self.gold_cache_dir / task / f"{variation}.json"

    def _cached_gold(self, task: str, variation: int) -> tuple[str, ...] | None:
        seq = self._gold.get((task, variation))
        path = self._gold_path(task, variation)
        if seq is None and path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("task") == task and data.get("variation") == variation:
                    seq = tuple(str(a) for a in data["actions"])
                    self._gold[(task, variation)] = seq
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                seq = None  # a corrupt cache entry is regenerated and overwritten
        return seq

    def _store_gold(self, task: str, variation: int, seq: tuple[str, ...]) -> None:
        self._gold[(task, variation)] = seq
        path = self._gold_path(task, variation)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # write-then-rename: several worker processes may share the cache
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{variation}.", suffix=".tmp")
        except OSError:
            return  # a read-only cache directory only costs speed
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"task": task, "variation": variation, "scienceworld": self.version,
                           "actions": list(seq)}, f)
            os.replace(tmp, path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)


__all__ = ["ScienceWorldEngine", "EpisodeStart", "StepResult", "ScienceWorldUnavailable",
           "ScienceWorldArgumentError", "UnknownTaskError", "VariationError", "SplitError",
           "require_java", "check_task", "check_variation", "variations", "default_cache_dir",
           "SPLITS", "DEFAULT_EVAL_BASELINES", "TASK_NAMES", "DEFAULT_TASKS", "VARIATION_SPLITS", "GOLD_PATH_STATS",
           "INVALID_ACTION_OBSERVATION", "AMBIGUOUS_PREFIX", "CANCELLED_CHOICE_PREFIX"]
