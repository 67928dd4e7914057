"""Atomic writes leave the old file or the new one, and files get the mode a plain write gives;
appends drop a crash's cut line, add whole lines only, and never cut a line being written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas.core.files import (
    append_lines,
    csv_line,
    json_digest,
    read_lines,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)

ROOT = Path(__file__).resolve().parents[3]


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_json_atomic(path, {"b": 1, "a": 2})
    assert path.read_text() == '{\n "a": 2,\n "b": 1\n}'
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    write_bytes_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_mode_follows_the_umask_like_a_plain_write(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "atomic", b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    mode = (tmp_path / "atomic").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o644


def test_digests(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f").startswith("ba7816bf")
    assert json_digest({"a": 1, "b": 2}) == json_digest({"b": 2, "a": 1})
    assert len(json_digest([1], length=8)) == 8


def test_an_append_drops_a_cut_last_line_and_adds_whole_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.jsonl"
    path.write_bytes(b"a\nb\nhalf")  # a kill while "half..." was written
    with caplog.at_level("WARNING", logger="nas.core.files"):
        assert read_lines(path) == ["a", "b"]  # a reader skips it, says so, writes nothing
    assert "cache.jsonl: skipping a partial last line (4 bytes)" in caplog.text
    assert path.read_bytes() == b"a\nb\nhalf"
    caplog.clear()
    with caplog.at_level("WARNING", logger="nas.core.files"):
        assert append_lines(path, ["c", "d"], header=["h"]) == 4
    assert path.read_bytes() == b"a\nb\nc\nd\n"  # no header: the file was not empty
    assert "cache.jsonl: dropped a partial last line (4 bytes of a record cut" in caplog.text
    assert append_lines(path, []) == 0 and path.read_bytes() == b"a\nb\nc\nd\n"
    # a file holding nothing but a cut line (its header, say) starts again with its header
    path.write_bytes(b"h-cut")
    append_lines(path, ["x"], header=["h"])
    assert path.read_bytes() == b"h\nx\n"
    append_lines(tmp_path / "new" / "f.csv", [csv_line(["k", "1,5", 'q"'])], header=["k,v,w"])
    assert (tmp_path / "new" / "f.csv").read_text() == 'k,v,w\nk,"1,5","q"""\n'
    with pytest.raises(ValueError, match="a record must be one line"):
        append_lines(path, ["y", "two\nlines"])
    assert path.read_bytes() == b"h\nx\n"  # nothing of a refused append is written


_SLOW_WRITER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_APPEND | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)  # the rule: every appender holds the file's lock
os.write(fd, b'{"writer": "slow", "half": ')
print("halfway", flush=True)
time.sleep(1.0)
os.write(fd, b'"the rest"}\\n')
os.close(fd)
"""


def test_a_line_another_writer_is_writing_is_never_cut(tmp_path: Path) -> None:
    """Truncation happens only under the lock every append holds, so the partial line of a
    writer still at work is never taken for a crash's leftover."""
    path = tmp_path / "shared.jsonl"
    path.write_bytes(b'{"writer": "first"}\n')
    slow = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert slow.stdout is not None and slow.stdout.readline() == "halfway\n"
    assert read_lines(path) == ['{"writer": "first"}']  # a reader only skips the half line
    assert append_lines(path, ['{"writer": "fast"}']) == 0  # waits for the lock, cuts nothing
    assert slow.wait(timeout=30) == 0
    assert [json.loads(line)["writer"] for line in read_lines(path)] == ["first", "slow", "fast"]
    assert path.read_bytes().endswith(b"\n")


_APPENDER = """
import importlib.util, json, sys
# the module alone (it needs only the standard library), without the torch `nas.core` pulls in
spec = importlib.util.spec_from_file_location("files", sys.argv[4])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    pad = "x" * (7919 * i % 200_000)  # lines of 0 to 200 kB: writes of many pages
    files.append_lines(path, [json.dumps({"w": name, "i": i, "pad": pad})], header=["header"])
"""


def test_two_processes_appending_to_one_file_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    path.write_bytes(b"header\n" + b'{"w": "dead", "i": 0, "pad": "xx')  # a crash's leftover
    n = 100
    module = ROOT / "nas" / "core" / "files.py"
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), name, str(n), str(module)])
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    data = path.read_bytes()
    lines = data.decode().split("\n")
    assert lines[0] == "header" and lines[-1] == "" and data.count(b"header") == 1
    records = [json.loads(line) for line in lines[1:-1]]  # every line whole: none glued
    for name in ("a", "b"):
        mine = [r for r in records if r["w"] == name]
        assert [r["i"] for r in mine] == list(range(n))  # each one once, in its order
        assert all(r["pad"] == "x" * (7919 * r["i"] % 200_000) for r in mine)
