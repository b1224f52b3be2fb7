"""Ordinary data work in the real sandbox: what members come for must just work."""

from __future__ import annotations

from interpreter.types import ExitCause
from tests.sandbox_helpers import files_by_name, input_file, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SALES_CSV = b"month,region,revenue\nJan,North,120\nJan,South,90\nFeb,North,150\nFeb,South,80\nMar,North,170\nMar,South,110\n"


async def test_print_hello(runner):
    outcome = await run(runner, "print('Hello, world!')")
    assert outcome.cause is ExitCause.OK
    assert outcome.output == "Hello, world!\n"
    assert outcome.return_code == 0


async def test_pandas_on_an_uploaded_csv(runner, tmp_path):
    sales = input_file(tmp_path, "sales.csv", SALES_CSV, file_id="f_sales")
    outcome = await run(
        runner,
        """
        df = load_file('f_sales')
        print(type(df).__name__, df.shape)
        print(df.groupby('region')['revenue'].sum().to_dict())
        print(FILES['f_sales'])
        print(load_file('sales.csv').equals(df))
        """,
        inputs=(sales,),
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    lines = outcome.output.splitlines()
    assert lines[0] == "DataFrame (6, 3)"
    assert lines[1] == "{'North': 440, 'South': 280}"
    assert lines[2].endswith("/sales.csv")
    assert lines[3] == "True"


async def test_input_files_are_copies_the_stored_blob_cannot_change(runner, tmp_path):
    sales = input_file(tmp_path, "sales.csv", SALES_CSV, file_id="f_sales")
    outcome = await run(
        runner,
        """
        import os
        path = FILES['f_sales']
        try:
            open(path, 'w').write('overwritten')
        except OSError as exc:
            print('write refused', type(exc).__name__)
        """,
        inputs=(sales,),
    )
    assert "write refused" in outcome.output
    assert sales.host_path.read_bytes() == SALES_CSV


async def test_seaborn_chart_comes_back_as_png(runner, tmp_path):
    sales = input_file(tmp_path, "sales.csv", SALES_CSV, file_id="f_sales")
    outcome = await run(
        runner,
        """
        import seaborn as sns, matplotlib.pyplot as plt
        df = load_file('f_sales')
        sns.barplot(data=df, x='month', y='revenue', hue='region')
        plt.savefig('revenue.png')
        print('saved')
        """,
        inputs=(sales,),
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    files = files_by_name(outcome)
    assert files["revenue.png"].startswith(PNG_MAGIC)
    assert [f.type for f in outcome.files if f.filename == "revenue.png"] == ["image"]


async def test_plt_show_and_open_figures_are_captured(runner):
    outcome = await run(
        runner,
        """
        import matplotlib.pyplot as plt
        plt.plot([1, 2, 3], [3, 1, 2]); plt.title('shown')
        plt.show()
        plt.figure(); plt.bar(['a', 'b'], [1, 2])   # left open: saved at the end
        """,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    names = sorted(files_by_name(outcome))
    assert names == ["figure_1.png", "figure_2.png"]
    assert all(data.startswith(PNG_MAGIC) for data in files_by_name(outcome).values())


async def test_plotly_show_returns_interactive_html(runner):
    outcome = await run(
        runner,
        """
        import plotly.express as px
        fig = px.line(x=[1, 2, 3], y=[2, 4, 3], title='trend')
        fig.show()
        """,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    [html] = [f for f in outcome.files if f.type == "html"]
    assert b"plotly" in html.data.lower() and b"trend" in html.data


async def test_multiprocessing_pool_with_two_workers(runner):
    outcome = await run(
        runner,
        """
        from multiprocessing import Pool
        def square(x):
            return x * x
        with Pool(2) as pool:
            print(sum(pool.map(square, range(100))))
        """,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output.strip() == "328350"


async def test_last_expression_is_displayed_like_a_notebook(runner):
    outcome = await run(
        runner,
        """
        import pandas as pd
        df = pd.DataFrame({'a': [1, 2], 'b': [3, 4]})
        df
        """,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output.split() == ["a", "b", "0", "1", "3", "1", "2", "4"]


async def test_xlsx_loads_first_sheet_as_a_dataframe(runner, tmp_path):
    made = await run(
        runner,
        """
        import pandas as pd
        with pd.ExcelWriter('book.xlsx') as writer:
            pd.DataFrame({'x': [1, 2, 3]}).to_excel(writer, sheet_name='first', index=False)
            pd.DataFrame({'y': [9]}).to_excel(writer, sheet_name='second', index=False)
        """,
    )
    book = files_by_name(made)["book.xlsx"]
    xlsx = input_file(tmp_path, "book.xlsx", book, file_id="f_book")
    outcome = await run(runner, "df = load_file('f_book'); print(type(df).__name__, list(df.columns), len(df))", inputs=(xlsx,))
    assert outcome.output.strip() == "DataFrame ['x'] 3", outcome.error


async def test_generated_files_are_collected_recursively_and_typed(runner):
    outcome = await run(
        runner,
        """
        import os, json
        os.makedirs('out/deep', exist_ok=True)
        open('out/deep/result.json', 'w').write(json.dumps({'ok': 1}))
        open('notes.txt', 'w').write('hello')
        open('report.html', 'w').write('<p>hi</p>')
        open('blob.bin', 'wb').write(b'\\x00\\x01')
        """,
    )
    kinds = {f.filename: f.type for f in outcome.files}
    assert kinds == {"out_deep_result.json": "data", "notes.txt": "text", "report.html": "html", "blob.bin": "file"}


async def test_exception_gives_a_traceback_of_the_members_code_only(runner):
    outcome = await run(runner, "x = 1\nprint('before')\n1 / 0\n")
    assert outcome.cause is ExitCause.EXCEPTION
    assert outcome.output == "before\n"
    assert "ZeroDivisionError: division by zero" in outcome.error
    assert 'File "<code>", line 3' in outcome.error
    assert "bootstrap" not in outcome.error


async def test_syntax_error_is_reported(runner):
    outcome = await run(runner, "def broken(:\n    pass\n")
    assert outcome.cause is ExitCause.EXCEPTION
    assert "SyntaxError" in outcome.error


async def test_sys_exit_codes(runner):
    ok = await run(runner, "import sys; print('bye'); sys.exit(0)")
    assert ok.cause is ExitCause.OK and ok.output == "bye\n"
    failed = await run(runner, "import sys; sys.exit(3)")
    assert failed.cause is ExitCause.EXCEPTION and failed.return_code == 3


async def test_stdout_and_stderr_keep_their_order(runner):
    outcome = await run(runner, "import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')\n")
    assert outcome.output == "one\ntwo\nthree\n"


async def test_invalid_utf8_output_is_replaced_not_fatal(runner):
    outcome = await run(runner, "import sys\n_ = sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')\n")
    assert outcome.cause is ExitCause.OK
    assert outcome.output == "ok \ufffd\ufffd end\n"


async def test_input_gets_eof_instead_of_hanging(runner):
    outcome = await run(runner, "try:\n    input('name? ')\nexcept EOFError:\n    print('no stdin')\n", timeout=5)
    assert outcome.output.endswith("no stdin\n")
