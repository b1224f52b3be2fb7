"""What a member sees of a /run, through discord.py's real dispatch (issue 17): notebook
display, every file accounted for, honest notes, helpful errors, the buttons (also after a
restart), the CSV drop's Analyse button, and input that is not code."""

from __future__ import annotations

import interpreter
from tests.discord_harness import attachment_payload
from tests.test_bot_run import no_pings


def modal_code(reply) -> str:
    """The prefilled value of the Code box the bot opened."""
    assert reply.callback.payload["type"] == 9, reply.callback.payload
    for row in reply.callback.payload["data"]["components"]:
        inner = row.get("components") or [row.get("component")]
        for component in inner:
            if component and component.get("type") == 4:
                return component.get("value") or ""
    raise AssertionError(f"no text input in {reply.callback.payload}")


async def test_a_series_as_the_last_line_is_shown(discord_world):
    w = discord_world
    code = ("import pandas as pd\n"
            "df = pd.DataFrame({'region': ['north', 'south', 'north'], 'revenue': [1, 2, 3]})\n"
            "df.groupby('region').revenue.sum()")
    reply = await w.harness.slash("run", w.alice, code=code)
    assert reply.content.startswith("✅"), reply.content
    assert "north    4" in reply.content and "Name: revenue" in reply.content
    assert "```py\nimport pandas as pd" in reply.content, "the code that ran is shown"


async def test_files_past_the_listing_limit_are_named(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="for i in range(25):\n    open(f'out_{i:02}.txt', 'w').write(str(i))")
    attached = list(reply.final.files)
    assert len(attached) == 10
    content = reply.content
    for i in range(25):
        name = f"out_{i:02}.txt"
        assert name in attached or name.replace("_", "\\_") in content, f"{name} vanished"
    assert "too many files" in content and len(content) <= 2000


async def test_charts_come_first_in_creation_order_without_no_output(discord_world):
    w = discord_world
    code = "import matplotlib.pyplot as plt\nfor i in range(12):\n    plt.figure(); plt.plot([0, i])"
    reply = await w.harness.slash("run", w.alice, code=code)
    assert list(reply.final.files) == [f"figure_{i}.png" for i in range(1, 11)]
    assert "figure\\_11.png" in reply.content and "figure\\_12.png" in reply.content
    assert "(no output)" not in reply.content


async def test_a_cut_output_says_output_txt_is_cut_too(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="print('x' * 150_000)")
    assert "the end was cut" in reply.content
    assert "full output" not in reply.content, "output.txt is not the full output"
    assert len(reply.final.files["output.txt"]) < 150_000


async def test_a_missing_approved_package_suggests_packages(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="import statsmodels.api as sm")
    assert "ModuleNotFoundError" in reply.content
    assert "`packages: statsmodels`" in reply.content


async def test_input_is_explained_and_a_network_attempt_is_one_line(discord_world):
    w = discord_world
    asked = await w.harness.slash("run", w.alice, code="name = input('Name? ')")
    assert "runs have no keyboard" in asked.content
    fetched = await w.harness.slash("run", w.alice, code="import seaborn as sns\nsns.load_dataset('titanic')")
    assert "seaborn's example dataset 'titanic'" in fetched.content and "no internet" in fetched.content
    assert "Traceback" not in fetched.content and "urllib" not in fetched.content


async def test_the_seeds_seaborn_example_runs_as_written(discord_world):
    w = discord_world
    code = ("import seaborn as sns\nimport matplotlib.pyplot as plt\ntips = sns.load_dataset('tips')\n"
            "plt.figure(figsize=(10, 6))\nsns.scatterplot(data=tips, x='total_bill', y='tip')\n"
            "plt.savefig('plot.png')\nprint('Plot saved!')")
    reply = await w.harness.slash("run", w.alice, code=code, packages="seaborn, matplotlib")
    assert "Plot saved!" in reply.content, reply.content
    assert reply.final.files["plot.png"].startswith(b"\x89PNG")


async def test_load_file_in_a_one_off_run_needs_no_files_option_and_checks_ownership(discord_world):
    w = discord_world
    mine = await interpreter.upload_file(w.alice.id, b"a,b\n1,2\n3,4\n", "mine.csv")
    theirs = await interpreter.upload_file(w.bob.id, b"secret\ncanary-5120\n", "bobs.csv")
    reply = await w.harness.slash("run", w.alice, code=f"df = load_file('{mine['file_id']}')\nprint(df.shape)")
    assert "(2, 2)" in reply.content, reply.content
    stolen = await w.harness.slash("run", w.alice, code=f"print(load_file('{theirs['file_id']}'))")
    assert "canary-5120" not in stolen.content and stolen.content.startswith("❌")


async def test_pasted_code_is_dedented(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="    total = 2\n    print(total * 21)")
    assert "```\n42\n```" in reply.content, reply.content


async def test_run_code_on_prose_runs_nothing(discord_world):
    w = discord_world
    target = w.harness.message_payload(w.bob, "thanks, that makes sense now")
    reply = await w.harness.message_menu("Run code", w.alice, target)
    assert reply.ephemeral and "no code to run" in reply.callback.content
    assert not [s for s in reply.sent if s.kind == "edit_original"], "nothing public"


async def test_edit_and_run_opens_the_box_with_the_code(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="print('first')")
    opened = await w.harness.click(reply, "Edit & run", w.bob)
    assert modal_code(opened) == "print('first')"
    edited = await w.harness.submit_modal(opened, w.bob, {"Code": "print('edited by bob')"})
    assert "edited by bob" in edited.content and edited.content.startswith("✅")


async def test_buttons_work_after_a_restart_from_what_the_message_holds(discord_world):
    w = discord_world
    short = await w.harness.slash("run", w.alice, code="print('short one')")
    long_code = "\n".join(f"v{i} = {i}" for i in range(12)) + "\nprint('long one', v11)"
    long = await w.harness.slash("run", w.alice, code=long_code)
    assert "code.py" in long.final.files and "# … " in long.content

    # A restart (or another shard): nothing remembered in memory, no view stored per message.
    w.bot.get_cog("Run").recent.clear()
    assert long.message_id not in w.bot._connection._view_store._views

    shown = await w.harness.click(long, "Show code", w.bob)
    assert "print('long one', v11)" in shown.callback.content
    again = await w.harness.click(short, "Run again", w.alice)
    assert "short one" in again.content and again.message_id != short.message_id
    again_long = await w.harness.click(long, "Run again", w.alice)
    assert "long one 11" in again_long.content
    await w.harness.click(short, "Delete", w.alice)
    assert short.message_id in w.harness.recorder.deleted


async def test_a_dropped_csv_offers_analyse_with_load_file_written(discord_world, tmp_path):
    w = discord_world
    csv = tmp_path / "sales.csv"
    csv.write_text("region,units\nnorth,3\nsouth,4\n")
    uploaded = await w.harness.slash("upload", w.alice, attachments={"file": attachment_payload(csv)})
    assert "Analyse in /run" in uploaded.buttons()
    [stored] = await interpreter.list_user_files(w.alice.id)
    refused = await w.harness.click(uploaded, "Analyse in /run", w.bob)
    assert refused.callback.ephemeral
    opened = await w.harness.click(uploaded, "Analyse in /run", w.alice)
    code = modal_code(opened)
    assert code.startswith(f"df = load_file('{stored['file_id']}')")
    ran = await w.harness.submit_modal(opened, w.alice, {"Code": code})
    assert "units" in ran.content and ran.content.startswith("✅"), ran.content
    no_pings(ran.final)


async def test_a_binary_file_named_csv_is_not_previewed_as_a_table(discord_world, tmp_path):
    w = discord_world
    fake = tmp_path / "data.csv"
    fake.write_bytes(bytes(range(256)) * 8)
    uploaded = await w.harness.slash("upload", w.alice, attachments={"file": attachment_payload(fake)})
    assert "**Shape:**" not in uploaded.content and "binary" in uploaded.content, uploaded.content
    assert "Analyse in /run" not in uploaded.buttons()


async def test_errors_point_at_the_members_line_with_pythons_hint(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="total = 3\nprint(totl)")
    assert "Did you mean: 'total'?" in reply.content
    assert "/opt/runtime" not in reply.content and "bootstrap" not in reply.content
    keyed = await w.harness.slash("run", w.alice, code="import pandas as pd\ndf = pd.DataFrame({'revenue': [1]})\ndf['revenu']")
    assert "columns are: 'revenue'" in keyed.content and "site-packages" not in keyed.content


async def test_plotly_comes_back_as_a_png_and_html_that_needs_no_internet(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="import plotly.express as px\npx.bar(x=[1, 2], y=[3, 4])")
    assert list(reply.final.files) == ["plotly_figure_1.png", "plotly_figure_1.html"], "the PNG first, shown inline"
    png = reply.final.files["plotly_figure_1.png"]
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, "a drawn chart, not an empty image"
    html = reply.final.files["plotly_figure_1.html"]
    assert b"Plotly.newPlot" in html and b'<script src="http' not in html and b"cdn.plot.ly/plotly" not in html[:5000]
    assert "(no output)" not in reply.content and "plotly-png" not in reply.content, "the queued JSON is never shown"


async def test_a_plotly_render_that_fails_is_one_line_and_the_html_stays(discord_world, monkeypatch):
    from interpreter.render import plotly_png

    # Fault injection: the "Chromium" the render sandbox starts exits at once.
    monkeypatch.setattr(plotly_png, "find_chromium", lambda: "/usr/bin/false")
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="import plotly.express as px\npx.bar(x=[1, 2], y=[3, 4])")
    assert reply.content.startswith("✅"), reply.content
    assert list(reply.final.files) == ["plotly_figure_1.html"]
    [line] = [line for line in reply.content.splitlines() if "plotly" in line and "png" in line]
    assert "not rendered: Chromium did not start" in line, reply.content
    assert "plotly-png" not in reply.content


async def test_someone_elses_code_cannot_load_the_clickers_files(discord_world):
    w = discord_world
    mine = await interpreter.upload_file(w.alice.id, b"secret\ncanary-7731\n", "mine.csv")
    target = w.harness.message_payload(w.bob, f"```py\nprint(load_file('{mine['file_id']}'))\n```")
    reply = await w.harness.message_menu("Run code", w.alice, target)
    assert "fresh sandbox" in reply.content
    assert "canary-7731" not in reply.content, "the clicker's file was made available to someone else's code"
    assert "Files available: none" in reply.content
