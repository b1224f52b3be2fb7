"""What members see of a run, inside the real sandbox: notebook-style display of the last
expression, errors that point at their own line, no internet and no keyboard said plainly,
seaborn's example datasets offline, charts in creation order at a readable size."""

from __future__ import annotations

import struct

import pytest

from interpreter.types import ExitCause
from tests.sandbox_helpers import files_by_name, run

SALES = """
import pandas as pd
df = pd.DataFrame({"region": ["north", "south", "north", "east"] * 10, "revenue": range(40), "units": [1.5] * 40})
"""


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG"), data[:8]
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("last_line, expected", [
    ("df.groupby('region').revenue.sum()", "north    380\nsouth    190\neast     210\nName: revenue"),
    ("df.region.value_counts()", "north    20"),
    ("df.dtypes", "revenue      int64"),
    ("df.describe()", "count  40.000000"),
])
async def test_pandas_objects_as_the_last_line_display_like_a_notebook(runner, last_line, expected):
    outcome = await run(runner, SALES + last_line)
    assert outcome.cause is ExitCause.OK, outcome.error
    assert expected.split("\n")[0] in outcome.output, outcome.output
    assert "TypeError" not in outcome.output


async def test_big_frames_arrays_and_reprs_are_summarised(runner):
    frame = await run(runner, "import pandas as pd\npd.DataFrame({'x': range(1000)})")
    assert "[1000 rows x 1 columns]" in frame.output and len(frame.output) < 1000, frame.output
    array = await run(runner, "import numpy as np\nnp.arange(100_000)")
    assert "..." in array.output and len(array.output) < 300, array.output
    huge = await run(runner, "list(range(100_000))")
    assert huge.cause is ExitCause.OK and not huge.output_truncated
    assert "more characters: print() it to see everything" in huge.output
    assert len(huge.output) < 25_000


async def test_a_trailing_semicolon_hides_the_value_as_in_a_notebook(runner):
    outcome = await run(runner, "1 + 1;")
    assert outcome.output == ""


async def test_name_error_keeps_pythons_hint_and_shows_only_the_members_frames(runner):
    outcome = await run(runner, "total = 3\nprint(totl)")
    assert "NameError: name 'totl' is not defined. Did you mean: 'total'?" in outcome.error
    assert 'File "<code>", line 2' in outcome.error
    assert "/opt/runtime" not in outcome.error and "bootstrap" not in outcome.error


async def test_a_forgotten_import_names_the_import_line(runner):
    outcome = await run(runner, "df = pd.DataFrame()")
    assert "import pandas as pd" in outcome.error


async def test_syntax_error_points_at_the_members_line_not_at_ast(runner):
    outcome = await run(runner, "x = (\nprint(x)")
    assert "SyntaxError" in outcome.error
    assert "ast.py" not in outcome.error and "Traceback" not in outcome.error
    assert 'File "<code>", line 1' in outcome.error


async def test_key_error_on_a_dataframe_lists_the_columns_and_hides_pandas_internals(runner):
    outcome = await run(runner, SALES + "df['revenu']")
    error = outcome.error
    assert "KeyError: 'revenu'" in error
    assert "'region', 'revenue', 'units'" in error and "Did you mean 'revenue'?" in error
    assert "site-packages" not in error and "During handling" not in error and "direct cause" not in error
    assert "raised inside pandas" in error


async def test_key_errors_name_columns_only_when_a_column_was_looked_up(runner):
    grouped = await run(runner, SALES + "df.groupby('regio').revenue.sum()")
    assert "columns are" in grouped.error and "Did you mean 'region'?" in grouped.error
    row = await run(runner, SALES + "df.loc['no such row']")
    assert "KeyError" in row.error and "columns are" not in row.error, "a row label is not a column"
    plain = await run(runner, "d = {'a': 1}\nd['b']")
    assert "KeyError: 'b'" in plain.error and "Hint" not in plain.error


async def test_attribute_error_on_a_dataframe_suggests_the_column(runner):
    outcome = await run(runner, SALES + "df.revenu")
    assert "Did you mean: 'revenue'?" in outcome.error


async def test_text_columns_in_corr_suggest_numeric_only(runner):
    outcome = await run(runner, SALES + "df.corr()")
    assert "numeric_only=True" in outcome.error


async def test_input_says_runs_have_no_keyboard(runner):
    outcome = await run(runner, "name = input('Your name? ')")
    assert "runs have no keyboard" in outcome.error
    caught = await run(runner, "try:\n    input()\nexcept EOFError:\n    print('default used')")
    assert caught.output.strip() == "default used", "code that handles EOFError still works"


@pytest.mark.parametrize("code", [
    "import pandas as pd\npd.read_csv('https://example.com/data.csv')",
    "import socket\nsocket.create_connection(('example.com', 80))",
    "import socket\ns = socket.socket()\ns.connect(('93.184.216.34', 80))",
    "import urllib.request as r\nr.urlopen('http://example.com')",
])
async def test_any_network_attempt_is_one_clear_line(runner, code):
    outcome = await run(runner, code)
    assert outcome.cause is ExitCause.EXCEPTION
    assert outcome.error.startswith("This sandbox has no internet"), outcome.error
    assert "upload the file instead" in outcome.error.lower()
    assert outcome.error.count("\n") == 1, outcome.error


@pytest.mark.parametrize("name, rows, columns", [
    ("tips", 244, ["total_bill", "tip", "sex", "smoker", "day", "time", "size"]),
    ("iris", 150, ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]),
    ("penguins", 344, ["species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex"]),
    ("mpg", 398, ["mpg", "cylinders", "displacement", "horsepower", "weight", "acceleration", "model_year", "origin", "name"]),
    ("anscombe", 44, ["dataset", "x", "y"]),
])
async def test_seaborn_example_datasets_load_offline(runner, name, rows, columns):
    outcome = await run(runner, f"import seaborn as sns\nd = sns.load_dataset({name!r})\nprint(d.shape[0], list(d.columns))")
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output.strip() == f"{rows} {columns}"


async def test_a_seaborn_dataset_not_available_offline_says_what_is(runner):
    outcome = await run(runner, "import seaborn as sns\nsns.load_dataset('titanic')")
    assert "'titanic'" in outcome.error and "no internet" in outcome.error
    assert "tips" in outcome.error and "penguins" in outcome.error
    assert outcome.error.count("\n") == 1


async def test_twelve_charts_come_back_in_creation_order(runner):
    code = ("import matplotlib.pyplot as plt\n"
            "open('notes.txt', 'w').write('x')\n"
            "for i in range(12):\n    plt.figure(); plt.plot([0, i])\n")
    outcome = await run(runner, code)
    names = [f.filename for f in outcome.files]
    assert names[:12] == [f"figure_{i}.png" for i in range(1, 13)], names
    assert names[12:] == ["notes.txt"], "charts first"


async def test_huge_figures_are_capped_in_pixels(runner):
    code = ("import matplotlib.pyplot as plt\n"
            "fig = plt.figure(figsize=(30, 20)); plt.plot([1, 2])\n"
            "fig2 = plt.figure(figsize=(12, 8)); plt.plot([1, 2]); fig2.savefig('mine.png', dpi=300)\n")
    outcome = await run(runner, code)
    files = files_by_name(outcome)
    for name in ("figure_1.png", "mine.png"):
        width, height = png_size(files[name])
        assert max(width, height) <= 1700, (name, width, height)  # 1600 plus tight-bbox rounding


async def test_plotly_html_works_offline(runner):
    outcome = await run(runner, "import plotly.express as px\npx.bar(x=[1, 2], y=[3, 4])", timeout=60)
    assert outcome.cause is ExitCause.OK, outcome.error
    [html] = [f for f in outcome.files if f.filename.endswith(".html")]
    text = html.data.decode()
    import re

    assert not re.search(r"<script[^>]*\bsrc=", text), "no script is loaded from elsewhere"
    assert "Plotly.newPlot" in text and html.size > 1_000_000, "plotly.js is inlined"


async def test_plotly_static_export_never_starts_a_browser_in_the_run(runner):
    # kaleido is installed (the render sandbox uses it): in a run, write_image queues the
    # figure for the host, and what cannot be deferred says what works instead.
    outcome = await run(runner, "import plotly.express as px\npx.bar(x=[1], y=[2]).write_image('my chart.png')",
                        timeout=60)
    assert outcome.cause is ExitCause.OK, outcome.error
    assert [f.filename for f in outcome.files] == ["plotly-png_my_chart.json"]
    for call in ("to_image()", "write_image('c.jpg')", "write_image(open('c.png', 'wb'))"):
        outcome = await run(runner, f"import plotly.express as px\npx.bar(x=[1], y=[2]).{call}", timeout=60)
        assert outcome.cause is ExitCause.EXCEPTION, call
        assert "runs have no browser" in outcome.error and "fig.write_image('chart.png')" in outcome.error, call
