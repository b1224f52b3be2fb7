"""Settings: defaults, validation messages that name the variable, secrets kept hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import FIELDS, SettingsError, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults_match_the_seed():
    settings = load_settings({}, dotenv=False)
    assert settings.run_timeout == 60
    assert settings.output_limit_bytes == 100_000
    assert settings.max_file_size_mb == 50
    assert settings.file_expiry_hours == 48
    assert settings.mongodb_uri == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUN_TIMEOUT_SECONDS": "soon"}, "RUN_TIMEOUT_SECONDS='soon' is invalid: expected an integer >= 1 and <= 3600."),
        ({"RUN_MEMORY_MB": "10"}, "RUN_MEMORY_MB='10' is invalid: expected an integer >= 64."),
        ({"AUTO_UPLOAD": "maybe"}, "AUTO_UPLOAD='maybe' is invalid: expected true/false (also 1/0, yes/no, on/off)."),
        ({"OWNER_IDS": "12,abc"}, "OWNER_IDS='12,abc' is invalid: expected a comma-separated list of numeric Discord ids."),
        ({"FILE_EXPIRY_HOURS": "-1"}, "FILE_EXPIRY_HOURS='-1' is invalid: expected a number >= 0."),
        ({"SANDBOX_FORK_WARM_SPARES": "17"},
         "SANDBOX_FORK_WARM_SPARES='17' is invalid: expected an integer from 0 to 16, or true (all) / false (none)."),
    ],
)
def test_invalid_values_name_the_variable_and_what_it_accepts(env, message):
    with pytest.raises(SettingsError) as caught:
        load_settings(env, dotenv=False)
    assert str(caught.value) == message


@pytest.mark.parametrize(("raw", "count"), [("1", 1), ("2", 2), ("true", 16), ("on", 16), ("false", 0), ("0", 0)])
def test_warm_spares_is_a_count_and_true_or_false_still_mean_all_or_none(raw, count):
    """SANDBOX_FORK_WARM_SPARES was true/false: a deployment that set it keeps its meaning."""
    assert load_settings({"SANDBOX_FORK_WARM_SPARES": raw}, dotenv=False).sandbox_fork_warm_spares == count


def test_secrets_never_show_in_reprs_or_errors():
    settings = load_settings({"DISCORD_TOKEN": "tok-123", "MONGODB_URI": "mongodb://u:p@h/db"}, dotenv=False)
    assert "tok-123" not in repr(settings) and "u:p@h" not in repr(settings)
    assert settings.discord_token.reveal() == "tok-123"


def test_env_example_readme_table_and_kubernetes_settings_are_generated_from_the_settings():
    from config.docs import DOCKERFILE, KUBERNETES_SETTINGS, readme_with_table, render_env_example, \
        render_kubernetes_settings

    assert (REPO / ".env.example").read_text() == render_env_example(), "run: python -m config.docs"
    assert KUBERNETES_SETTINGS.read_text() == render_kubernetes_settings(DOCKERFILE.read_text()), \
        "run: python -m config.docs"
    readme = (REPO / "README.md").read_text()
    assert readme_with_table(readme) == readme, "run: python -m config.docs"
    for field in FIELDS:
        assert f"`{field.env}`" in readme


def test_settings_dataclass_and_field_table_agree():
    from dataclasses import fields

    from config import Settings

    assert [f.name for f in fields(Settings)] == [f.attr for f in FIELDS]


def test_kubernetes_settings_take_the_images_own_values():
    """The image sets DATA_DIR and the venv's place; a ConfigMap with the code's defaults would
    send a pod's data to a relative path on a read-only root."""
    from config.docs import image_environment, render_kubernetes_settings

    dockerfile = "FROM x\nENV A=1 \\\n    DATA_DIR=/data \\\n    VENV_MAX_AGE_DAYS=0\nRUN true\n"
    assert image_environment(dockerfile) == {"A": "1", "DATA_DIR": "/data", "VENV_MAX_AGE_DAYS": "0"}
    rendered = render_kubernetes_settings(dockerfile).splitlines()
    assert "DATA_DIR=/data" in rendered and "VENV_MAX_AGE_DAYS=0" in rendered
    assert "RUN_TIMEOUT_SECONDS=60" in rendered
    assert not [line for line in rendered if line.startswith(("DISCORD_TOKEN=", "MONGODB_URI=", "SHARD_COUNT="))]
