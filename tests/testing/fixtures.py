"""Fixtures shared by the proxy test modules (import them by name: pytest picks them up)."""

from __future__ import annotations

import pytest

from testing.live import KEY_ENV, FakeUpstream, ServerThread


@pytest.fixture(scope="module")
def upstream():
    """A fake OpenAI-compatible upstream on loopback, one per test module (``.url`` set)."""
    fake = FakeUpstream()
    with ServerThread(fake.app()) as srv:
        fake.url = srv.url
        yield fake


@pytest.fixture(autouse=True)
def fake_api_key(monkeypatch):
    """The API-key variable the fake pool names, set for every test of the importing module."""
    monkeypatch.setenv(KEY_ENV, "sk-test-not-a-real-key")
