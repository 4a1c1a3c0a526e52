"""Who may call the proxy: API keys with owners (tenants), checked in constant time.

A key belongs to one tenant; a conversation belongs to the tenant whose key started it, and
conversation ids are per tenant (tenant B asking for tenant A's id finds nothing: 404, and a turn
from B under that id opens B's own conversation). An *admin* key may list every tenant's
conversations and read ``/metrics``; a tenant's optional ``budget_cap`` (USD) clips the budget of
every conversation it starts (a conversation without a budget gets the cap); its optional
``max_open`` caps its open conversations.

Keys come from ``--keys FILE`` (TOML or JSON) and/or the ``MTROUTER_KEYS`` environment variable
(the same JSON inline, so keys need not sit in a file or on the command line); ``--token T`` is one
more admin key (tenant ``admin``). Format::

    [keys."sk-alice-..."]
    tenant = "alice"
    budget_cap = 2.0      # optional, USD per conversation
    max_open = 100        # optional
    [keys."sk-ops-..."]
    tenant = "ops"
    admin = true

(JSON: ``{"keys": {"sk-alice-...": {"tenant": "alice", "budget_cap": 2.0}}}``; the top-level
``keys`` table may be omitted.) Without any key the proxy is open: one anonymous tenant, admin.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mtrouter_jax.core.errors import UsageError

KEYS_ENV = "MTROUTER_KEYS"
_FIELDS = {"tenant", "admin", "budget_cap", "max_open"}


class KeysFileError(UsageError):
    """A keys file (or ``MTROUTER_KEYS``) that cannot be used; the message names where and what."""


@dataclass(frozen=True)
class Tenant:
    """The owner of a key (``name`` "" is the anonymous tenant of a proxy without keys)."""

    name: str
    admin: bool = False
    budget_cap: float | None = None
    max_open: int | None = None


ANONYMOUS = Tenant("", admin=True)


def _tenant(key: str, spec: Any, where: str) -> Tenant:
    if not isinstance(spec, Mapping):
        raise KeysFileError(f"{where}: key {key[:4]}...: expected a table with 'tenant', got {type(spec).__name__}")
    extra = set(spec) - _FIELDS
    if extra:
        raise KeysFileError(f"{where}: key {key[:4]}...: unknown field(s) {sorted(extra)} (expected {sorted(_FIELDS)})")
    name = spec.get("tenant")
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise KeysFileError(f"{where}: key {key[:4]}...: 'tenant' must be a name of 1 to 64 characters")
    admin = spec.get("admin", False)
    if not isinstance(admin, bool):
        raise KeysFileError(f"{where}: tenant {name!r}: 'admin' must be true or false")
    cap = spec.get("budget_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))
                            or not math.isfinite(cap) or cap <= 0):
        raise KeysFileError(f"{where}: tenant {name!r}: 'budget_cap' must be a finite number > 0 USD, got {cap!r}")
    most = spec.get("max_open")
    if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
        raise KeysFileError(f"{where}: tenant {name!r}: 'max_open' must be an integer >= 1, got {most!r}")
    return Tenant(name.strip(), admin, None if cap is None else float(cap), most)


def parse_keys(doc: Any, where: str) -> dict[str, Tenant]:
    """key -> Tenant from a decoded keys document (``{"keys": {...}}`` or the mapping itself)."""
    if isinstance(doc, Mapping) and set(doc) == {"keys"}:
        doc = doc["keys"]
    if not isinstance(doc, Mapping) or not doc:
        raise KeysFileError(f"{where}: expected a table of keys (key -> {{tenant = ...}}), got none")
    out = {}
    for key, spec in doc.items():
        if not isinstance(key, str) or len(key) < 8 or key != key.strip():
            raise KeysFileError(f"{where}: every key must be a string of at least 8 characters, without "
                                "surrounding spaces")
        out[key] = _tenant(key, spec, where)
    return out


def load_keys(path: str | Path | None = None, token: str | None = None,
              env: Mapping[str, str] | None = None) -> "KeyRing":
    """The keys of ``--keys FILE``, ``MTROUTER_KEYS`` and ``--token`` (an admin key), together."""
    keys: dict[str, Tenant] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise KeysFileError(f"--keys {p}: cannot read it ({e.strerror or e})") from None
        try:
            doc = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as e:
            raise KeysFileError(f"--keys {p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {e}") from None
        keys.update(parse_keys(doc, f"--keys {p}"))
    inline = (os.environ if env is None else env).get(KEYS_ENV)
    if inline:
        try:
            doc = json.loads(inline)
        except ValueError as e:
            raise KeysFileError(f"{KEYS_ENV}: not valid JSON: {e}") from None
        keys.update(parse_keys(doc, KEYS_ENV))
    if token is not None:
        if not token:
            raise KeysFileError("--token: empty")
        keys[token] = Tenant("admin", admin=True)
    return KeyRing(keys)


class KeyRing:
    """The configured keys; :meth:`tenant_of` authenticates an ``Authorization`` header."""

    def __init__(self, keys: Mapping[str, Tenant] | None = None):
        self.keys = [(k.encode("utf-8"), t) for k, t in (keys or {}).items()]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def tenant_of(self, header: bytes | None) -> Tenant | None:
        """The tenant of ``Authorization: Bearer KEY`` (scheme in any case, RFC 7235), None when the
        key is missing or unknown. Every configured key is compared, each with
        ``hmac.compare_digest``: the time taken says nothing about which key, or how much of one,
        matched. Without keys, everyone is the anonymous tenant."""
        if not self.keys:
            return ANONYMOUS
        scheme, _, cred = (header or b"").strip().partition(b" ")
        cred = cred.strip()
        found = None
        for key, tenant in self.keys:
            if hmac.compare_digest(cred, key) and found is None:
                found = tenant
        return found if scheme.lower() == b"bearer" else None

    def tenants(self) -> list[Tenant]:
        return list({t.name: t for _, t in self.keys}.values())


__all__ = ["Tenant", "KeyRing", "KeysFileError", "load_keys", "parse_keys", "ANONYMOUS", "KEYS_ENV"]
