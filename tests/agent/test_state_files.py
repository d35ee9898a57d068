"""The agent's state files: absent reads as None, a corrupt one is a StateError naming the
file (and, for credentials, what to do), a saved one reads back as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.state import CREDENTIALS, DESIRED, Credentials, StateError, StateStore


def _store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state")
    store.ensure_dir()
    return store


def test_absent_files_read_as_none(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.load_credentials() is None
    assert store.load_desired() is None


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"worker_id": 1}', b"[" * 10_000])
@pytest.mark.parametrize(
    ("name", "load", "says"),
    [
        (CREDENTIALS, StateStore.load_credentials, "is corrupt; remove it to re-register"),
        (DESIRED, StateStore.load_desired, "is corrupt"),
    ],
)
def test_a_corrupt_file_is_a_state_error_naming_it(
    tmp_path: Path, content: bytes, name: str, load: object, says: str
) -> None:
    store = _store(tmp_path)
    (store.dir / name).write_bytes(content)
    with pytest.raises(StateError) as caught:
        load(store)  # type: ignore[operator]
    assert caught.value.message == f"{store.dir / name} {says}"


def test_saved_files_read_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    creds = Credentials(worker_id="srv-w1", secret="s" * 43)
    store.save_credentials(creds)
    assert store.load_credentials() == creds
    store.forget_credentials()
    assert store.load_credentials() is None
