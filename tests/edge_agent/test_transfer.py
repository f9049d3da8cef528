"""edge_agent.transfer in-process: windowing, refusals, resume from the progress file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edge_agent.config import TransferSettings
from edge_agent.core.wire import Chunk, FetchRequest, ModelRef
from edge_agent.transfer import Transfer, TransferFailed

DATA = os.urandom(10_000)
SHA = hashlib.sha256(DATA).hexdigest()
REF = ModelRef(
    version_id=1, ref="p/m:1", format="onnx", precision="fp32", sha256=SHA, size=len(DATA),
    signature="x",
)  # fmt: skip
SETTINGS = TransferSettings(chunk_size=1000, window=3, timeout_s=1.0, max_retries=2)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _make(tmp_path: Path, sent: list[FetchRequest], clock: Clock | None = None) -> Transfer:
    def send(request: FetchRequest) -> bool:
        sent.append(request)
        return True

    return Transfer(REF, 7, tmp_path, SETTINGS, send, clock=clock or Clock())


def _chunk(
    offset: int, *, deployment: int = 7, total: int = len(DATA), length: int = 1000
) -> bytes:
    return Chunk(deployment, SHA, offset, total, DATA[offset : offset + length]).encode()


def test_window_fill_and_completion(tmp_path: Path) -> None:
    sent: list[FetchRequest] = []
    transfer = _make(tmp_path, sent)
    transfer.pump()
    assert [r.offset for r in sent] == [0, 1000, 2000]  # the window
    while not transfer.complete:
        request = sent.pop(0)
        assert transfer.on_chunk(_chunk(request.offset))
    assert transfer.read() == DATA and transfer.good_offset == len(DATA)


def test_refused_chunks_are_re_requested_then_fail(tmp_path: Path) -> None:
    sent: list[FetchRequest] = []
    transfer = _make(tmp_path, sent)
    transfer.pump()
    assert not transfer.on_chunk(_chunk(0, deployment=8))  # another deployment
    assert not transfer.on_chunk(_chunk(1000, total=len(DATA) + 1))  # size mismatch
    assert not transfer.on_chunk(_chunk(1000, length=10))  # truncated
    assert not transfer.on_chunk(_chunk(20_000))  # beyond the size
    assert not transfer.on_chunk(_chunk(0)[:-1] + b"\x00")  # CRC mismatch: second refusal
    assert [r.offset for r in sent].count(0) == 3  # asked, and asked again after each refusal
    with pytest.raises(TransferFailed, match="CRC mismatch .refused 3 times"):
        transfer.on_chunk(_chunk(0)[:-1] + b"\x00")


def test_timeouts_and_reconnects_re_request_only_what_is_missing(tmp_path: Path) -> None:
    sent: list[FetchRequest] = []
    clock = Clock()
    transfer = _make(tmp_path, sent, clock)
    transfer.pump()
    transfer.on_chunk(_chunk(0))
    sent.clear()
    clock.now = 5.0
    transfer.tick()
    assert sorted(r.offset for r in sent) == [1000, 2000, 3000]
    sent.clear()
    transfer.reconnected()
    assert sorted(r.offset for r in sent) == [1000, 2000, 3000]


def test_a_new_transfer_resumes_from_the_progress_file(tmp_path: Path) -> None:
    sent: list[FetchRequest] = []
    transfer = _make(tmp_path, sent)
    transfer.pump()
    for offset in (0, 1000, 2000):
        transfer.on_chunk(_chunk(offset))
    sent.clear()
    again = _make(tmp_path, sent)  # a restarted agent
    assert again.resumed_bytes == 3000 and again.good_offset == 3000
    again.pump()
    assert [r.offset for r in sent] == [3000, 4000, 5000]
    while not again.complete:
        again.on_chunk(_chunk(sent.pop(0).offset))
    assert again.read() == DATA
    again.discard()
    assert not list(tmp_path.iterdir())
