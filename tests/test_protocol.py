"""The host's parser of the control channel: everything a run sends back is hostile input."""

from __future__ import annotations

import asyncio
import json

import pytest

from interpreter.sandbox.protocol import ControlState, ProtocolError, consume


def reader_with(*chunks: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=64 * 1024)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


def frame(kind: str, payload: bytes = b"", **fields) -> bytes:
    return json.dumps(dict(fields, kind=kind, size=len(payload))).encode() + b"\n" + payload


async def collect(*chunks: bytes, max_files: int = 20, max_file_size: int = 1000, max_total: int = 5000) -> ControlState:
    state = ControlState()
    await consume(reader_with(*chunks), state, max_files=max_files, max_file_size=max_file_size, max_total=max_total)
    return state


async def test_names_are_flattened_sanitised_and_made_unique():
    state = await collect(
        frame("file", b"a", name="../../etc/passwd"),
        frame("file", b"b", name="out/plot.png"),
        frame("file", b"c", name="out_plot.png"),
        frame("file", b"d", name="\u202egnp.exe"),
        frame("end"),
    )
    names = [f.filename for f in state.files]
    assert names == ["_.._etc_passwd", "out_plot.png", "out_plot_2.png", "gnp.exe"]
    assert [f.type for f in state.files] == ["file", "image", "image", "file"]
    assert state.ended


async def test_count_and_total_caps_hold_whatever_the_run_claims():
    state = await collect(*[frame("file", b"x" * 400, name=f"{i}.txt") for i in range(5)],
                          max_files=3, max_total=1000)
    assert [f.filename for f in state.files] == ["0.txt", "1.txt"]  # the third would pass 1000 bytes
    assert state.skipped == ["2.txt (total size limit)", "3.txt (total size limit)", "4.txt (total size limit)"]


@pytest.mark.parametrize(
    "stream",
    [
        b'{"kind": "file", "name": "big", "size": 1001}\n' + b"x" * 1001,  # over the per-file cap
        b'{"kind": "file", "size": -5}\n',  # negative size
        b"not json at all\n",
        b'["a", "list"]\n',
        b'{"kind": "file", "name": "cut", "size": 10}\nabc',  # payload shorter than announced
        b"x" * (70 * 1024),  # a header line longer than the limit
    ],
)
async def test_malformed_frames_stop_parsing_with_a_protocol_error(stream):
    with pytest.raises((ProtocolError, asyncio.IncompleteReadError)):
        await collect(frame("file", b"ok", name="fine.txt"), stream)


async def test_only_the_first_finished_frame_counts_and_exit_codes_are_typed():
    state = await collect(
        frame("finished", status="ok", exit_code=0, error=""),
        frame("finished", status="exception", exit_code=1, error="forged later"),
    )
    assert state.finished == {"status": "ok", "exit_code": 0, "error": ""}
    forged = await collect(frame("finished", status="exception", exit_code="1; rm -rf", error="x" * 50_000))
    assert forged.finished["exit_code"] == 1 and len(forged.finished["error"]) == 20_000
