"""A real MongoDB wire-protocol server for the test session (mongoeco over TCP).

No mongod can be installed from this machine's registries, so the tests talk to
`mongoeco.wire.proxy.AsyncMongoEcoProxyServer`: PyMongo and motor connect to it over
TCP exactly as they would to mongod. mongoeco needs Python >= 3.13, so it lives in its
own venv (`.venv-mongo`, built by `scripts/setup_mongo_test_server.sh`) and runs as a
subprocess. A missing venv FAILS the tests that need it, with the command to run:
a Mongo suite that silently skipped would prove nothing.

Fixtures:
- `mongo_server`: the session's server (in-memory engine); `.uri`.
- `mongo_db_name`: a fresh database name per test.
- `pymongo_db` / `motor_db`: a database handle on that fresh name (PyMongo async / motor).
- `db_handle`: the same, chosen by `@pytest.mark.parametrize("db_handle", [None, "pymongo", "motor"], indirect=True)`.
- `MongoTestServer`: start your own (e.g. with a file-backed engine, to stop and restart it).

And, for the user-files suites, one contract fixture over all metadata backends:
- `file_backend`: parametrised sqlite / mongo-pymongo (MONGODB_URI, PyMongo async) /
  mongo-motor (a motor database as db_handler); `.manager(**kw)` builds FileManagers
  on a `TestClock`, `.raw_records()` reads the database directly.
"""

from __future__ import annotations

import dataclasses
import os
import select
import sqlite3
import socket
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MONGO_VENV = Path(os.environ.get("MONGO_TEST_VENV", REPO_ROOT / ".venv-mongo"))
SETUP_HINT = "run scripts/setup_mongo_test_server.sh (needs a Python >= 3.13) to build it"
START_TIMEOUT_SECONDS = 60

# Runs inside the mongoeco venv. Prints "READY <port>" once it accepts connections and
# exits when told (SIGTERM) or when the test process dies (its stdin reaches EOF).
_SERVER_SCRIPT = r"""
import asyncio, signal, sys
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

async def main(port, sqlite_path):
    engine = None
    if sqlite_path:
        from mongoeco.engines.sqlite import SQLiteEngine
        engine = SQLiteEngine(sqlite_path)
    server = AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=port)
    address = await server.start()
    print("READY", address.port, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1() or stop.set())
    await stop.wait()
    await server.close()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


def mongo_python() -> Path:
    """The mongoeco venv's interpreter, or a test failure explaining how to build it."""
    python = MONGO_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"MongoDB test server venv missing at {MONGO_VENV}: {SETUP_HINT}", pytrace=False)
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MongoTestServer:
    """One mongoeco wire server in a subprocess. Can be stopped and restarted on the same port."""

    def __init__(self, port: int | None = None, sqlite_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.sqlite_path = sqlite_path
        self._process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "MongoTestServer":
        if self.running:
            return self
        python = mongo_python()
        self._process = subprocess.Popen(
            [str(python), "-c", _SERVER_SCRIPT, str(self.port), str(self.sqlite_path or "")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        line = self._read_ready_line()
        if not line.startswith(b"READY"):
            stderr = b""
            if self._process.poll() is not None:
                stderr = self._process.stderr.read()
            self.stop()
            pytest.fail(f"MongoDB test server did not start: {line!r} {stderr.decode(errors='replace')[-2000:]}",
                        pytrace=False)
        return self

    def _read_ready_line(self) -> bytes:
        assert self._process is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], START_TIMEOUT_SECONDS)
        if not ready:
            return b"(no answer within %d s)" % START_TIMEOUT_SECONDS
        return self._process.stdout.readline().strip()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream:
                stream.close()


@pytest.fixture(scope="session")
def mongo_server():
    server = MongoTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def mongo_db_name() -> str:
    return "test_" + uuid.uuid4().hex[:16]


@pytest.fixture
async def pymongo_db(mongo_server, mongo_db_name):
    from pymongo import AsyncMongoClient

    client = AsyncMongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000)
    yield client[mongo_db_name]
    await client.close()


@pytest.fixture
async def motor_db(mongo_server, mongo_db_name):
    from motor.motor_asyncio import AsyncIOMotorClient

    client = AsyncIOMotorClient(mongo_server.uri, serverSelectionTimeoutMS=5000)
    yield client[mongo_db_name]
    client.close()


@pytest.fixture
async def db_handle(request, mongo_db_name):
    """A database handle chosen by indirect parametrisation: None, "pymongo" or "motor"."""
    kind = getattr(request, "param", None)
    if kind is None:
        yield None
        return
    server = request.getfixturevalue("mongo_server")
    if kind == "pymongo":
        from pymongo import AsyncMongoClient

        client = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=5000)
        yield client[mongo_db_name]
        await client.drop_database(mongo_db_name)
        await client.close()
    else:
        from motor.motor_asyncio import AsyncIOMotorClient

        client = AsyncIOMotorClient(server.uri, serverSelectionTimeoutMS=5000)
        yield client[mongo_db_name]
        await client.drop_database(mongo_db_name)
        client.close()


# --- user-files contract fixtures


class TestClock:
    """A clock the tests move by hand. Starts at the real time, so MongoDB's TTL monitor
    (which uses the real time) never removes a record a test still expects."""

    __test__ = False  # not a test class, despite the name

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def file_settings(data_dir: Path, **environ: str):
    """Settings from explicit values only (the test session's environment holds a canary URI)."""
    from config import load_settings

    return load_settings({"DATA_DIR": str(data_dir), **environ}, dotenv=False)


@dataclasses.dataclass
class FileBackend:
    name: str
    settings: object
    clock: TestClock
    db_handler: object = None  # the motor database, for mongo-motor
    raw_db: object = None  # a PyMongo async database for direct inspection (mongo backends)
    stores: list = dataclasses.field(default_factory=list)

    @property
    def is_mongo(self) -> bool:
        return self.name.startswith("mongo")

    def store(self, settings=None):
        from interpreter.store import open_store

        store = open_store(settings or self.settings, db_handler=self.db_handler)
        self.stores.append(store)
        return store

    def manager(self, settings=None, **options):
        from interpreter.files import FileManager

        settings = settings or self.settings
        options.setdefault("clock", self.clock)
        return FileManager(settings, self.store(settings), **options)

    def with_settings(self, **environ: str):
        """Settings of this backend with some values changed (limits, expiry)."""
        same_database = {}
        if self.name == "mongo-pymongo":
            same_database = {"MONGODB_URI": self.settings.mongodb_uri.reveal(),
                             "MONGODB_DATABASE": self.settings.mongodb_database}
        return file_settings(self.settings.data_dir, **{**same_database, **environ})

    async def raw_records(self) -> list[dict]:
        """Every stored record, straight from the database (datetimes as the database returns them)."""
        if self.is_mongo:
            return await self.raw_db.user_files.find({}, {"_id": 0}).to_list(length=None)
        path = self.settings.sqlite_path
        if not path.exists():
            return []
        with sqlite3.connect(path) as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute("SELECT * FROM user_files")]


@pytest.fixture(params=["sqlite", "mongo-pymongo", "mongo-motor"])
async def file_backend(request, tmp_path, mongo_db_name):
    clock = TestClock()
    data_dir = tmp_path / "data"
    if request.param == "sqlite":
        backend = FileBackend("sqlite", file_settings(data_dir), clock)
        yield backend
    else:
        from motor.motor_asyncio import AsyncIOMotorClient
        from pymongo import AsyncMongoClient

        server = request.getfixturevalue("mongo_server")
        inspector = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=5000)
        motor_client = None
        if request.param == "mongo-pymongo":
            settings = file_settings(data_dir, MONGODB_URI=server.uri, MONGODB_DATABASE=mongo_db_name)
            backend = FileBackend("mongo-pymongo", settings, clock, raw_db=inspector[mongo_db_name])
        else:
            motor_client = AsyncIOMotorClient(server.uri, serverSelectionTimeoutMS=5000)
            backend = FileBackend("mongo-motor", file_settings(data_dir), clock,
                                  db_handler=motor_client[mongo_db_name], raw_db=inspector[mongo_db_name])
        yield backend
        for store in backend.stores:
            await store.close()
        await inspector.drop_database(mongo_db_name)
        await inspector.close()
        if motor_client is not None:
            motor_client.close()
        return
    for store in backend.stores:
        await store.close()


__all__ = ["FileBackend", "MongoTestServer", "TestClock", "file_settings", "free_port", "mongo_python"]
