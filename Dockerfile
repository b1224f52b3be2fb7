# Discord code-interpreter bot.
#   docker build -t code-interpreter .
# Container privileges the sandbox needs are explained in README ("Docker").
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    SANDBOX_VENV_DIR=/opt/sandbox-venv \
    SANDBOX_BASE_PYTHON=/usr/local/bin/python3 \
    VENV_MAX_AGE_DAYS=0

# bubblewrap: the distribution's bwrap (preferred over the wheel's copy);
# libseccomp2: the syscall filter; util-linux: setpriv/prlimit used to launch runs;
# tini: reaps sandbox processes and forwards signals; chromium-headless-shell: plotly
# figures as PNG, rendered in a render sandbox of its own (README, "What a run shows"),
# and fontconfig for its prebuilt font cache (/var/cache/fontconfig: no font scan per render).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap libseccomp2 util-linux tini \
        chromium-headless-shell fontconfig \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
COPY config ./config
COPY interpreter ./interpreter
RUN pip install .

# An unprivileged account for the bot. Members' code never runs as this account's
# files: each run gets a fresh bubblewrap sandbox with only the run's own inputs.
RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin bot \
    && mkdir -p /data "$SANDBOX_VENV_DIR" \
    && chown bot:bot /data "$SANDBOX_VENV_DIR"

# Build the sandbox venv (pandas, matplotlib, seaborn, plotly...) into the image so the
# first /run is fast and the container needs no package index at start-up.
USER 10001:10001
RUN python -c "import asyncio; from config import load_settings; from interpreter.packages import PackageManager; asyncio.run(PackageManager(load_settings(dotenv=False)).ensure_venv())"

VOLUME ["/data"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "bot"]
