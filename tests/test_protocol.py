"""The host's parser of the control channel: everything a run sends back is hostile input."""

from __future__ import annotations

import asyncio
import json

import pytest

from interpreter.sandbox.protocol import MAX_SKIPPED_LISTED, ControlState, FrameLimits, ProtocolError, consume


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
    await consume(reader_with(*chunks), state,
                  FrameLimits(max_files=max_files, max_file_size=max_file_size, max_total=max_total))
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


async def test_a_second_finished_frame_and_untyped_exit_codes_break_the_channel():
    state = await collect(frame("finished", b"", status="ok", exit_code=0))
    assert state.finished == {"status": "ok", "exit_code": 0, "error": ""}
    for stream in (
        frame("finished", status="ok", exit_code=0) + frame("finished", status="exception", exit_code=1),
        frame("finished", status="exception", exit_code="1; rm -rf"),
        frame("finished", status="exception", exit_code=2**70),  # would overflow the audit's integer column
        frame("finished", status="exception", exit_code=1.5),
        frame("finished", status="exception", exit_code=True),
        frame("finished", status="pwned", exit_code=0),
    ):
        with pytest.raises(ProtocolError):
            await collect(stream)
    long_error = await collect(frame("finished", "é".encode() * 30_000, status="exception", exit_code=1))
    assert long_error.finished["error"] == "é" * 20_000


async def test_duplicate_names_stay_unique_and_skipped_names_are_bounded():
    state = await collect(*[frame("file", b"x", name="a.png") for _ in range(15)],
                          *[frame("skipped", name="a.png", reason="too large") for _ in range(MAX_SKIPPED_LISTED + 5)],
                          frame("skipped_more", count=1000), frame("end"), max_files=20)
    names = [f.filename for f in state.files]
    assert names[:3] == ["a.png", "a_2.png", "a_3.png"] and len(set(names)) == 15
    assert len(state.skipped) == MAX_SKIPPED_LISTED + 1
    assert state.skipped[-1] == "… and 1,005 more files that were not sent"


@pytest.mark.parametrize("stream", [
    b"[" * 5000 + b"]" * 5000 + b"\n",  # nesting: RecursionError inside json
    b'{"kind": "file", "name": "x", "size": 1e999}\n',  # a float, and an infinite one
    b'{"kind": "file", "name": ["nested"], "size": 0}\n',
    b'{"kind": "launch", "size": 0}\n',
    b'{"kind": "end", "size": 3}\nabc',  # payload where none belongs
    b'{"kind": "skipped_more", "count": -1, "size": 0}\n',
])
async def test_every_malformed_header_is_a_protocol_error_not_a_crash(stream):
    with pytest.raises(ProtocolError):
        await collect(stream)


async def test_frames_and_bytes_per_job_are_capped():
    with pytest.raises(ProtocolError, match="too many frames"):
        await collect(*[frame("skipped", name=f"{i}", reason="x") for i in range(1000)])
    limits = FrameLimits(max_files=3, max_file_size=10_000, max_total=10_000)
    flood = [frame("file", b"x" * 10_000, name=f"{i}.bin") for i in range(limits.max_frames - 1)]
    with pytest.raises(ProtocolError, match="more data"):  # skipped files' bytes count too
        await collect(*flood, max_files=3, max_file_size=10_000, max_total=10_000)


async def test_names_that_were_not_utf8_come_back_encodable():
    state = await collect(frame("file", b"x", name="caf\udce9.txt"), frame("skipped", name="\ud800", reason="x"))
    for text in [f.filename for f in state.files] + state.skipped:
        text.encode("utf-8")
