"""Inside the sandbox: what members see of their results, as a notebook would show it.

- `show(value)`: the value of a run's last expression (Series, DataFrames, dtypes, numpy
  arrays, images, figures, anything with a repr), shaped for a Discord message: pandas
  and numpy summarise big objects the way Jupyter does, and no repr is longer than
  MAX_DISPLAY_CHARS (a member who wants everything prints it).
- Figures: matplotlib figures are saved as PNG no larger than MAX_FIGURE_PIXELS on their
  long side (Discord shrinks bigger ones until their labels cannot be read); plotly
  figures as interactive HTML with plotly.js inlined (runs have no internet, and neither
  may the member who opens the file), and queued as JSON for the host to render as PNG.

Standard library only at import time: pandas, numpy, matplotlib and plotly are imported
by the member's code (or a pooled sandbox's preload), never by this module.
"""

from __future__ import annotations

import os
import sys

WORK_DIR = "/work"
MAX_DISPLAY_CHARS = 20_000  # the message shows ~1,900; the rest goes to output.txt
MAX_FIGURE_PIXELS = 1600  # longest side of a saved chart
DEFAULT_DPI = 110
MIN_DPI = 40
PANDAS_OPTIONS = {
    "display.max_rows": 30,  # longer objects show their first and last 5 rows, as in Jupyter
    "display.min_rows": 10,
    "display.max_columns": 12,
    "display.width": 120,
    "display.max_colwidth": 40,
}

# Plotly figures queued for a PNG rendered by the host (interpreter/render holds the same limits).
PNG_QUEUE_DIR = ".plotly-png"
MAX_PNG_FIGURES = 4
MAX_FIGURE_JSON_BYTES = 8 * 1024 * 1024

_counters: dict[str, int] = {}
_png_queued = 0


def unique_name(stem: str, ext: str) -> str:
    """`stem_N.ext`, numbered per stem in creation order, never overwriting a member's file."""
    while True:
        _counters[stem] = _counters.get(stem, 0) + 1
        candidate = f"{stem}_{_counters[stem]}.{ext}"
        if not os.path.lexists(os.path.join(WORK_DIR, candidate)):
            return candidate


# ----------------------------------------------------------------------- last expression


def _module_of(value) -> str:
    return type(value).__module__ or ""


def _is_figure_like(value) -> bool:
    """Matplotlib objects (and lists of them, as plt.plot returns): the chart is the display."""
    if _module_of(value).startswith("matplotlib"):
        return True
    if isinstance(value, (list, tuple)) and value:
        return all(_module_of(item).startswith("matplotlib") for item in value)
    return False


def render(value) -> str | None:
    """The text a notebook would show for `value` (None: nothing, or shown another way)."""
    if value is None or _is_figure_like(value):
        return None
    module = _module_of(value)
    if module.startswith("plotly"):
        show_plotly(value)
        return None
    if module.startswith("PIL") and hasattr(value, "save"):
        value.save(os.path.join(WORK_DIR, unique_name("image", "png")))
        return None
    if module.startswith("pandas"):
        import pandas

        if module.startswith("pandas.io.formats.style"):  # df.style...: show the table it styles
            value = value.data
        with pandas.option_context(*[item for pair in PANDAS_OPTIONS.items() for item in pair]):
            return repr(value)
    if module.startswith("numpy"):
        import numpy

        with numpy.printoptions(threshold=200, edgeitems=5, linewidth=PANDAS_OPTIONS["display.width"]):
            return repr(value)
    return repr(value)


def show(value) -> None:
    text = render(value)
    if text is None:
        return
    if len(text) > MAX_DISPLAY_CHARS:
        cut = len(text) - MAX_DISPLAY_CHARS
        text = f"{text[:MAX_DISPLAY_CHARS]}\n… ({cut:,} more characters: print() it to see everything)"
    print(text)


# ----------------------------------------------------------------------- matplotlib


def capped_dpi(figure, dpi) -> float:
    """`dpi` lowered so the figure's long side stays within MAX_FIGURE_PIXELS."""
    if not isinstance(dpi, (int, float)) or dpi <= 0:
        dpi = figure.get_dpi()
    width, height = figure.get_size_inches()
    longest = max(float(width), float(height), 0.01)
    return max(MIN_DPI, min(float(dpi), MAX_FIGURE_PIXELS / longest))


def save_open_figures() -> None:
    """Save every open matplotlib figure as a PNG in the work dir, then close it.

    Called by plt.show() (patched on import) and once after the code ends, so charts
    appear the way ChatGPT shows them, with or without savefig(), in creation order.
    """
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    for number in sorted(pyplot.get_fignums()):
        figure = pyplot.figure(number)
        if getattr(figure, "_saved_by_member", False):
            pyplot.close(figure)  # already saved with savefig(): don't send it twice
            continue
        if not figure.get_axes() and not figure.texts and not figure.images:
            pyplot.close(figure)
            continue
        name = unique_name("figure", "png")
        try:
            figure.savefig(os.path.join(WORK_DIR, name), dpi=capped_dpi(figure, DEFAULT_DPI), bbox_inches="tight")
        except Exception as exc:  # a broken figure must not hide the others
            print(f"[could not save a figure: {exc}]", file=sys.stderr)
        pyplot.close(figure)


def patch_pyplot(pyplot) -> None:
    # Agg cannot show anything: plt.show() saves the open figures instead.
    pyplot.show = lambda *args, **kwargs: save_open_figures()


def patch_figure(figure_module) -> None:
    original = figure_module.Figure.savefig

    def savefig(self, *args, **kwargs):
        self._saved_by_member = True
        kwargs["dpi"] = capped_dpi(self, kwargs.get("dpi", DEFAULT_DPI))
        return original(self, *args, **kwargs)

    figure_module.Figure.savefig = savefig


# ----------------------------------------------------------------------- plotly


def show_plotly(figure) -> None:
    """fig.show() would open a browser: write an interactive HTML file that works offline
    (plotly.js inlined: ~4.6 MB, but neither the run nor the member's viewer may have internet),
    and queue the figure for a PNG.

    The PNG is not made here: kaleido drives a Chromium, which inside a run's limits (64
    processes and threads) does not start. The host renders the queued figure after the
    run, in a render sandbox of its own (interpreter/render), where Chromium is installed."""
    name = unique_name("plotly_figure", "html")
    figure.write_html(os.path.join(WORK_DIR, name), include_plotlyjs=True, full_html=True)
    queue_png(figure, name[: -len(".html")])


def start_job() -> None:
    """A new job of this sandbox (a session has many): its own MAX_PNG_FIGURES."""
    global _png_queued
    _png_queued = 0


def queue_png(figure, stem: str, *, width=None, height=None) -> bool:
    """Write the figure's JSON to PNG_QUEUE_DIR as `stem.json` (the host's PNG is `stem.png`).

    At most MAX_PNG_FIGURES per run, none larger than MAX_FIGURE_JSON_BYTES: the host
    renders no more (interpreter/render/plotly_png.py holds the same limits), and a
    figure left out still has its HTML. False (and one line on stderr) when not queued."""
    global _png_queued
    if _png_queued >= MAX_PNG_FIGURES:
        print(f"[{stem}: no PNG, a run renders at most {MAX_PNG_FIGURES}]", file=sys.stderr)
        return False
    try:
        import plotly.io

        data = plotly.io.to_json(figure).encode()
        if width or height:
            import json

            spec = json.loads(data)
            layout = spec.setdefault("layout", {})
            layout.update({key: value for key, value in (("width", width), ("height", height)) if value})
            data = json.dumps(spec).encode()
    except Exception as exc:  # noqa: BLE001 - the HTML is already there
        print(f"[{stem}: no PNG ({type(exc).__name__})]", file=sys.stderr)
        return False
    if len(data) > MAX_FIGURE_JSON_BYTES:
        print(f"[{stem}: too much data for a PNG ({len(data) >> 20} MB)]", file=sys.stderr)
        return False
    os.makedirs(os.path.join(WORK_DIR, PNG_QUEUE_DIR), exist_ok=True)
    with open(os.path.join(WORK_DIR, PNG_QUEUE_DIR, f"{stem}.json"), "wb") as handle:
        handle.write(data)
    _png_queued += 1
    return True


PNG_ONLY = ("Plotly images are drawn after the run (runs have no browser), as PNG only: "
            "fig.write_image('chart.png'), or fig.show() for a PNG and an interactive HTML file")
_STEM_UNSAFE = r"[^A-Za-z0-9_-]+"  # compiled when used: `re` at import would cost every run ~4 ms


def write_image(fig, file, format=None, scale=None, width=None, height=None, *args, **kwargs) -> None:
    """plotly.io.write_image (and fig.write_image): queue a PNG for the host to render after
    the run, named as asked (in the work dir; sub-folders are flattened, as for every file)."""
    name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
    stem, ext = os.path.splitext(os.path.basename(str(name)))
    if not stem or (format or ext.lstrip(".") or "png").lower() != "png":
        raise ValueError(PNG_ONLY)
    import re

    queue_png(fig, re.sub(_STEM_UNSAFE, "_", stem)[:80], width=width, height=height)


def to_image(*args, **kwargs):
    raise ValueError(PNG_ONLY.replace("as PNG only", "so there are no image bytes in the run"))


def patch_plotly(basedatatypes) -> None:
    basedatatypes.BaseFigure.show = lambda figure, *args, **kwargs: show_plotly(figure)


def patch_plotly_images(kaleido_module) -> None:
    """Static export would start a Chromium inside the run: the host renders instead."""
    kaleido_module.write_image = write_image
    kaleido_module.to_image = to_image
