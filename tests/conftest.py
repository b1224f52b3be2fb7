"""Shared test set-up. Each area keeps its fixtures in its own module, loaded here."""

pytest_plugins = [
    "tests.fixtures_sandbox",
    "tests.fixtures_mongo",
    "tests.fixtures_discord",
    "tests.fixtures_executor",
    "tests.openai_script",  # `model`: a scripted OpenAI-compatible server (/ask)
]
