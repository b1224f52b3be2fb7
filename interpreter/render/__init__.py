"""Plotly figures as PNG, rendered on the host after the run, in a render sandbox of its own.

A run cannot render them itself: kaleido drives a Chromium, which does not start within
a run's limits (64 processes and threads) and would share the member's CPU, memory and
time. So a run only writes each figure it shows as JSON beside its HTML
(runtime/display.py, into PNG_QUEUE_DIR), and the executor hands those to
`PlotlyRenderer`, which renders them in one short-lived sandbox with the run's launch
chain (cgroups, unprivileged uid, bubblewrap, seccomp, no network) but its own limits
suited to Chromium, and nothing of the member's: figure JSON in, PNG bytes out.
"""

from interpreter.render.plotly_png import PNG_QUEUE_DIR, PlotlyRenderer, RenderOutcome

__all__ = ["PNG_QUEUE_DIR", "PlotlyRenderer", "RenderOutcome"]
