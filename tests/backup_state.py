"""Realistic agent state for backup tests and bench/backups.py: what an OpenClaw state
directory holds after weeks of use. Many small JSON session files and markdown memory
notes (text that compresses like real text, not random bytes) plus a few SQLite files
(memory index, sessions), deterministic for a seed.
"""

from __future__ import annotations

import json
import random
import sqlite3
from contextlib import closing
from pathlib import Path

_WORDS = (
    "agent reply message tool call result user assistant context memory note task "
    "calendar email invoice project deploy server meeting summary draft search web "
    "page link file image token model prompt answer question error retry schedule "
    "reminder contact whatsapp telegram channel thread review plan budget report"
).split()
SQLITE_SHARE = 0.3  # of the total, spread over three database files


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS) if rng.random() > 0.05 else f"{rng.getrandbits(40):x}"
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def _session(rng: random.Random, size: int) -> str:
    turns = []
    while sum(len(t["text"]) for t in turns) < size:
        turns.append(
            {
                "role": rng.choice(("user", "assistant", "tool")),
                "ts": 1_760_000_000 + rng.randrange(10_000_000),
                "text": _text(rng, rng.randrange(200, 2000)),
            }
        )
    return json.dumps({"id": f"{rng.getrandbits(64):016x}", "turns": turns}, indent=1)


def _database(path: Path, rng: random.Random, size: int) -> None:
    # `with db` only commits: the file stays open until a garbage collection closes the
    # connection, and an open file on a test's volume makes its unmount "busy".
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, source TEXT, body TEXT)")
        written = 0
        while written < size:
            rows = [(f"memory/{rng.randrange(500)}.md", _text(rng, 1500)) for _ in range(200)]
            db.executemany("INSERT INTO chunks (source, body) VALUES (?, ?)", rows)
            written += sum(len(body) for _, body in rows)
    path.chmod(0o600)


def make_state(root: Path, total_bytes: int, seed: int = 0) -> int:
    """Fill `root` with about `total_bytes` of agent state; the number of files made."""
    rng = random.Random(seed)
    for sub in ("agents/main/sessions", "memory", "workspace", "credentials"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    files = 0
    for name in ("memory.sqlite", "sessions.sqlite", "cron.sqlite"):
        _database(root / name, rng, int(total_bytes * SQLITE_SHARE / 3))
        files += 1
    written = int(total_bytes * SQLITE_SHARE)
    while written < total_bytes:
        kind = rng.random()
        if kind < 0.6:
            path, body = (
                root / f"agents/main/sessions/{files:06d}.jsonl",
                _session(rng, rng.randrange(4000, 40_000)),
            )
        elif kind < 0.9:
            path, body = (
                root / f"memory/{files:06d}.md",
                "# Note\n\n" + _text(rng, rng.randrange(500, 8000)),
            )
        else:
            path, body = root / f"workspace/{files:06d}.md", _text(rng, rng.randrange(1000, 20_000))
        path.write_text(body)
        written += len(body)
        files += 1
    (root / "credentials/oauth.json").write_text(json.dumps({"token": f"{rng.getrandbits(128):x}"}))
    return files + 1


def change_one_file(root: Path) -> Path:
    """Append a line to one memory note (what a day of use does to most files: nothing)."""
    note = sorted((root / "memory").iterdir())[0]
    with note.open("a") as f:
        f.write("\n- remembered something new today\n")
    return note
