"""Plotly figures as PNG (issue 17): rendered after the run in a render sandbox of its own
(interpreter/render), through the real engine, sandbox and Chromium; its answer read as
hostile bytes; a failure costs only the PNG, said in one line."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest

from interpreter.render import plotly_png
from interpreter.render.plotly_png import MAX_FIGURES, parse_answer, png_problem
from interpreter.types import ExitCause
from tests.fixtures_sandbox import FAKE_TOKEN

PLOTLY_BAR = "import plotly.express as px\npx.bar(x=[1, 2], y=[3, 4])"


def png_bytes(width: int, height: int) -> bytes:
    """A minimal, valid PNG of this size (header checks only need its IHDR)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def frame(index: int, data: bytes) -> bytes:
    return f'{{"index": {index}, "size": {len(data)}}}\n'.encode() + data


async def test_a_plotly_figure_comes_back_as_png_beside_its_html(engine):
    result = await engine.run(PLOTLY_BAR + ".update_layout(width=3000, height=1000)", user_id=1)
    assert result.success, result.error
    names = [item.filename for item in result.generated_files]
    assert names == ["plotly_figure_1.png", "plotly_figure_1.html"], names
    png = result.generated_files[0]
    assert png.type == "image" and png_problem(png.data) == ""
    width, height = struct.unpack(">II", png.data[16:24])
    assert (width, height) == (1600, 533), "a figure's long side is capped like a matplotlib chart's"
    assert result.skipped_files == ()
    status = (await engine.executor.status())["sandbox"]["plotly_png"]
    assert status["enabled"] and status["rendered"] == 1


async def test_write_image_gives_the_png_under_the_name_asked_for(engine):
    result = await engine.run(PLOTLY_BAR + ".write_image('sales.png', width=400, height=300)", user_id=1)
    assert result.success, result.error
    [png] = result.generated_files
    assert png.filename == "sales.png" and struct.unpack(">II", png.data[16:24]) == (400, 300)


async def test_each_run_of_a_session_gets_its_own_pngs_and_at_most_four(engine):
    code = "import plotly.express as px\nfor i in range(5):\n    px.bar(x=[1, 2], y=[3, i]).show()"
    first = await engine.run(code, user_id=1, session_id="s1")
    assert first.success, first.error
    pngs = [item.filename for item in first.generated_files if item.type == "image"]
    assert pngs == [f"plotly_figure_{i}.png" for i in range(1, MAX_FIGURES + 1)]
    assert len([item for item in first.generated_files if item.filename.endswith(".html")]) == 5, "every HTML stays"
    second = await engine.run("px.scatter(x=[1], y=[2])", user_id=1, session_id="s1")
    assert [item.filename for item in second.generated_files] == ["plotly_figure_6.png", "plotly_figure_6.html"]
    assert not any("plotly-png" in line for line in first.skipped_files + second.skipped_files)


async def test_with_plotly_png_off_figures_come_back_as_html_only(engine):
    engine.executor.renderer.settings = engine.settings.replace(plotly_png="off")
    result = await engine.run(PLOTLY_BAR, user_id=1)
    assert [item.filename for item in result.generated_files] == ["plotly_figure_1.html"]
    assert result.skipped_files == ()
    assert (await engine.executor.status())["sandbox"]["plotly_png"]["reason"] == "off (PLOTLY_PNG=off)"


async def test_a_figure_that_cannot_be_drawn_is_one_line_and_the_others_still_render(engine):
    # A member can write anything into the queue: a broken figure fails alone.
    code = ("import os, plotly.express as px\n"
            "px.bar(x=[1], y=[2]).show()\n"
            "os.makedirs('.plotly-png', exist_ok=True)\n"
            "open('.plotly-png/broken.json', 'w').write('[1, 2, 3]')\n")
    result = await engine.run(code, user_id=1)
    assert result.exit_cause is ExitCause.OK
    assert [item.filename for item in result.generated_files] == ["plotly_figure_1.png", "plotly_figure_1.html"]
    assert result.skipped_files == ("broken.png (not rendered: not a plotly figure; the HTML has it)",)


PROBE = r'''
import json, os, socket, sys
findings = []
for family, address in ((socket.AF_INET, ("1.1.1.1", 53)), (socket.AF_INET6, ("2606:4700:4700::1111", 53))):
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect(address)
        findings.append(f"connected to {address[0]}")
    except OSError:
        pass
try:
    socket.getaddrinfo("pypi.org", 443)
    findings.append("resolved a name")
except OSError:
    pass
for folder in ("/work", "/data"):
    if os.listdir(folder):
        findings.append(f"{folder} holds {os.listdir(folder)}")
if os.listdir("/in") != ["000.json"]:
    findings.append(f"/in holds {os.listdir('/in')}")
told = json.load(open("/in/000.json"))
for path in told["host_paths"]:
    if os.path.exists(path):
        findings.append(f"sees {path}")
for source in ("/proc/self/environ", "/proc/1/environ"):
    try:
        if told["secret"].encode() in open(source, "rb").read():
            findings.append(f"secret in {source}")
    except OSError:
        pass
print(findings, file=sys.stderr)
out = os.fdopen(1, "wb")
out.write(json.dumps({"index": 0, "error": findings[0] if findings else "isolated"}).encode() + b"\n")
'''


async def test_the_render_sandbox_has_no_network_and_sees_no_member_file(engine, monkeypatch):
    import json

    import interpreter

    uploaded = await interpreter.upload_file(1, b"region,revenue\nnorth,1\n", "mine.csv")
    ran = await engine.run(f"df = load_file('{uploaded['file_id']}')\nopen('left.txt', 'w').write('x')", user_id=1)
    assert ran.success, ran.error
    [blob] = await engine.files.resolve_for_run(1, [uploaded["file_id"]])
    host_paths = [str(blob.host_path), str(engine.settings.data_dir), "/work/left.txt", "/data/mine.csv"]
    monkeypatch.setattr(plotly_png, "WORKER_SOURCE", PROBE.encode())
    figure = json.dumps({"host_paths": host_paths, "secret": FAKE_TOKEN}).encode()
    outcome = await engine.executor.renderer.render([figure], owner=1)
    assert outcome.reasons == ("isolated",), outcome.reasons


@pytest.mark.parametrize("answer, expected", [
    (b"", "no answer"),
    (b"not json\n", "malformed answer"),
    (b'{"index": 1, "size": 10}\n', "malformed answer"),  # frames come in order
    (b'{"index": 0, "size": 999999999}\n', "malformed answer"),  # over MAX_PNG_BYTES
    (b'{"index": 0, "size": 100}\nshort', "malformed answer"),  # fewer bytes than announced
    (b'{"index": 0, "size": true}\n', "malformed answer"),
    (b"x" * 10_000, "malformed answer"),  # no header within MAX_HEADER_BYTES
    (frame(0, b"GIF89a" + b"\0" * 40), "not a PNG"),
    (frame(0, png_bytes(5000, 10)), "image too large"),
    (b'{"index": 0, "error": "@everyone \\u0000\\n' + b"x" * 200 + b'"}\n', "@everyone " + "x" * 29 + "…"),
])
def test_a_hostile_render_answer_gives_no_png_and_a_short_reason(answer, expected):
    pngs, reasons = parse_answer(answer, 2)
    assert pngs == [None, None]
    assert reasons[0] == expected
    assert len(reasons[0]) <= plotly_png.MAX_REASON_CHARS and "\n" not in reasons[0]


def test_a_sound_answer_gives_every_png_in_order():
    first, second = png_bytes(700, 500), png_bytes(10, 10)
    pngs, reasons = parse_answer(frame(0, first) + frame(1, second), 2)
    assert pngs == [first, second] and reasons == ["", ""]


async def test_a_render_sandbox_that_floods_or_hangs_is_stopped_and_leaves_nothing(engine, monkeypatch):
    renderer = engine.executor.renderer
    before = list(engine.runner.cgroups.created)  # warm capacity's own (the fork server's template) stay
    monkeypatch.setattr(plotly_png, "WORKER_SOURCE", b"import os\nwhile True: os.write(1, b'x' * 65536)\n")
    for _ in range(3):  # it hung about one time in three while its unread flood paused the pipe (Python 3.11)
        flooded = await asyncio.wait_for(renderer.render([b"{}"], owner=1), timeout=60)
        assert flooded.reasons == ("too much output",)
    monkeypatch.setattr(plotly_png, "WORKER_SOURCE", b"import time\ntime.sleep(3600)\n")
    monkeypatch.setattr(plotly_png, "RENDER_TIMEOUT_SECONDS", 1.0)
    hung = await renderer.render([b"{}"], owner=1)
    assert hung.reasons == ("timed out after 1 s",) and hung.duration < 15
    runner = engine.runner
    runner.cgroups.forget_removed()
    left = [group for group in runner.cgroups.created if group not in before]
    assert left == [], "the render sandboxes' cgroups are gone, so are their processes"
