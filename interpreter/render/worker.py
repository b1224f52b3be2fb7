"""Inside the render sandbox: plotly figures (JSON) in, PNG bytes out. Nothing else.

Run by interpreter/render/sandbox.py as `python -I -B worker.py` with the sandbox venv's
Python (plotly and kaleido are in its base set). The figures are the files of /in, in
name order, each a figure's JSON as plotly's `to_json()` wrote it inside a member's run:
hostile input, so every figure is rendered on its own and one that fails is reported
and skipped. kaleido drives the Chromium named by BROWSER_PATH over a pipe.

Answers on file descriptor 1 only, one frame per figure, in order:

    {"index": 0, "size": 12345}\n<12345 bytes of PNG>
    {"index": 1, "error": "why, one line"}\n

Chromium, kaleido and Python write their noise to fd 2 (the host logs its tail), so
nothing they print can pass for a frame. Standard library and kaleido only.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

IN_DIR = "/in"
MAX_PIXELS = 1600  # longest side, as matplotlib charts (runtime/display.py)
DEFAULT_SIZE = (700, 500)  # plotly's own default when the layout sets none
MAX_ERROR_CHARS = 200
FIGURE_TIMEOUT_SECONDS = 20


def _answer_channel():
    """fd 1 for frames only: a private copy of it, and fd 1 itself pointed at stderr."""
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def _size(figure: dict) -> tuple[int, int]:
    """The figure's own size, scaled down so its long side fits MAX_PIXELS."""
    layout = figure.get("layout") if isinstance(figure.get("layout"), dict) else {}
    width, height = (_dimension(layout.get(key), default) for key, default in zip(("width", "height"), DEFAULT_SIZE))
    longest = max(width, height)
    if longest > MAX_PIXELS:
        width, height = max(10, width * MAX_PIXELS // longest), max(10, height * MAX_PIXELS // longest)
    return width, height


def _dimension(value, default: int) -> int:
    return int(value) if isinstance(value, (int, float)) and 10 <= value <= 100_000 else default


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:MAX_ERROR_CHARS]


async def render_all(channel) -> None:
    import kaleido

    names = sorted(os.listdir(IN_DIR))
    # mathjax=False: kaleido would otherwise load MathJax from a CDN (no network here).
    # plotly.js comes from the installed plotly package (kaleido's default): offline too.
    renderer = kaleido.Kaleido(n=1, mathjax=False, timeout=FIGURE_TIMEOUT_SECONDS)
    try:
        await renderer.open()
    except Exception as exc:  # noqa: BLE001 - said for every figure; the details go to stderr
        print(f"Chromium did not start: {exc!r}", file=sys.stderr)
        for index in range(len(names)):
            channel.write(json.dumps({"index": index, "error": "Chromium did not start"}).encode() + b"\n")
        return
    for index, name in enumerate(names):
        try:
            with open(os.path.join(IN_DIR, name), "rb") as handle:
                figure = json.load(handle)
            if not isinstance(figure, dict):
                raise ValueError("not a plotly figure")
            width, height = _size(figure)
            png = await renderer.calc_fig(figure, opts={"format": "png", "width": width, "height": height,
                                                        "scale": 1})
            channel.write(json.dumps({"index": index, "size": len(png)}).encode() + b"\n" + png)
        except Exception as exc:  # noqa: BLE001 - one bad figure must not cost the others
            channel.write(json.dumps({"index": index, "error": _one_line(exc)}).encode() + b"\n")


def main() -> None:
    channel = _answer_channel()
    try:
        asyncio.new_event_loop().run_until_complete(render_all(channel))
    finally:
        # No polite shutdown of Chromium or of kaleido's reader threads (asyncio.run would
        # wait for them): the sandbox ends with this process, as bwrap is its pid 1.
        channel.close()
        os._exit(0)


if __name__ == "__main__":
    main()
