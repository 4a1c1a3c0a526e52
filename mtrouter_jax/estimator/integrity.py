"""Checkpoint integrity: sha256 digests of every file, parameter array and the metadata, and their checks."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

INTEGRITY_FILE = "integrity.json"
INTEGRITY_SCHEMA = "mtrouter-ckpt-integrity/1"


class CheckpointError(Exception):
    """The checkpoint cannot be used (missing, corrupted, or made by incompatible code)."""


class CheckpointIntegrityWarning(UserWarning):
    """The checkpoint predates integrity digests, so its files cannot be verified."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(f: Path) -> str:
    with open(f, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _flat_arrays(state: dict) -> dict[str, Any]:
    """``{"hist1/kernel": array, ...}`` of a pure state dict."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in kp): v for kp, v in leaves}


def array_digest(a: Any) -> dict:
    """``{"dtype", "shape", "sha256"}`` of one array; the digest covers dtype, shape and bytes."""
    dtype, shape = str(a.dtype), [int(n) for n in np.shape(a)]
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)  # typed PRNG keys have no bytes of their own
    x = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{dtype}|{shape}|".encode())
    h.update(x.tobytes())
    return {"dtype": dtype, "shape": shape, "sha256": h.hexdigest()}


def _write_manifest(path: Path, meta: dict) -> None:
    """Write ``integrity.json``: size and sha256 of every file orbax wrote, the metadata digest,
    and the digest of all that (so a damaged manifest is detected too). Atomic (temp + rename)."""
    files = {}
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and rel != INTEGRITY_FILE:
            files[rel] = {"size": f.stat().st_size, "sha256": _file_sha256(f)}
    body = {"schema": INTEGRITY_SCHEMA, "algorithm": "sha256", "meta_sha256": _sha256(_canonical(meta)),
            "files": files}
    data = json.dumps({**body, "sha256": _sha256(_canonical(body))}, indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{INTEGRITY_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path / INTEGRITY_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _short(digest: Any) -> str:
    return f"{str(digest)[:16]}…"


def _lines(problems: list[str], limit: int = 12) -> str:
    more = [f"... and {len(problems) - limit} more"] if len(problems) > limit else []
    return "".join(f"\n  {p}" for p in problems[:limit] + more)


def _read_manifest(path: Path) -> dict | None:
    """The verified ``integrity.json`` of ``path``; None if there is none (an older checkpoint)."""
    f = path / INTEGRITY_FILE
    if not f.exists():
        return None
    try:
        doc = json.loads(f.read_bytes())
        body = {k: v for k, v in doc.items() if k != "sha256"}
        ok = doc.get("schema") == INTEGRITY_SCHEMA and _sha256(_canonical(body)) == doc.get("sha256")
        files = doc["files"]
        ok = ok and isinstance(files, dict) and all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            and not Path(k).is_absolute() and ".." not in Path(k).parts for k, v in files.items())
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{f}: corrupted integrity manifest ({type(e).__name__}: {e})") from None
    if not ok:
        raise CheckpointError(f"{f}: integrity manifest damaged or modified (its own sha256 or schema "
                              f"does not match {INTEGRITY_SCHEMA!r})")
    return doc


def verify_files(path: str | Path) -> dict | None:
    """Check every file listed in ``integrity.json`` (present, size, sha256).

    Returns the manifest, or None for a checkpoint written before manifests existed. Raises
    ``CheckpointError`` listing each missing, truncated or altered file (expected vs got).
    """
    path = Path(path)
    doc = _read_manifest(path)
    if doc is None:
        return None
    problems = []
    for rel, want in sorted(doc["files"].items()):
        f = path / rel
        if not f.is_file():
            problems.append(f"{rel}: missing (expected {want['size']} bytes)")
            continue
        size = f.stat().st_size
        if size != want["size"]:
            what = "truncated" if size < want["size"] else "grown"
            problems.append(f"{rel}: {what}: {size} bytes, expected {want['size']}")
            continue
        got = _file_sha256(f)
        if got != want["sha256"]:
            problems.append(f"{rel}: content altered: sha256 {_short(got)}, expected {_short(want['sha256'])}")
    if problems:
        raise CheckpointError(f"{path}: {len(problems)} damaged file(s):" + _lines(problems))
    return doc


def _verify_arrays(path: Path, state: dict, expected: Any) -> None:
    """Compare the restored arrays with the digests recorded at save time."""
    if not isinstance(expected, dict) or not all(isinstance(v, dict) for v in expected.values()):
        raise CheckpointError(f"{path}: metadata integrity.arrays is malformed")
    got = {name: array_digest(a) for name, a in _flat_arrays(state).items()}
    problems = []
    for name in sorted(expected.keys() | got.keys()):
        e, g = expected.get(name), got.get(name)
        if g is None:
            problems.append(f"array {name!r}: recorded at save but not restored")
        elif e is None:
            problems.append(f"array {name!r}: restored but not recorded at save")
        elif (e.get("dtype"), e.get("shape")) != (g["dtype"], g["shape"]):
            problems.append(f"array {name!r}: {g['dtype']}{g['shape']}, expected {e.get('dtype')}{e.get('shape')}")
        elif e.get("sha256") != g["sha256"]:
            problems.append(f"array {name!r}: sha256 {_short(g['sha256'])}, expected {_short(e.get('sha256'))}")
    if problems:
        raise CheckpointError(f"{path}: {len(problems)} parameter array(s) differ from those saved:" + _lines(problems))


__all__ = ["INTEGRITY_FILE", "INTEGRITY_SCHEMA", "CheckpointError", "CheckpointIntegrityWarning", "array_digest",
           "verify_files"]
