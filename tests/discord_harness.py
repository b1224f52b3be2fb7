"""Drive real INTERACTION_CREATE payloads through discord.py and record what the bot sends.

dpytest has no slash-command support, and discord.py sends every interaction
response (initial reply, deferral, edits of @original, follow-ups, modals,
autocomplete answers) through `AsyncWebhookAdapter.request`, not through the
client's HTTP object. So the only thing replaced here is that one network method:
the `Recorder` answers it like Discord would (with message payloads carrying
ids, so discord.py can store views and dispatch button clicks) and keeps every
request, with its JSON payload and the bytes of each attached file.

Everything else is real: the gateway parser (`ConnectionState.parse_interaction_create`),
the bot's CommandTree (option parsing, checks, autocomplete, error handler), the
view store (buttons), modals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import discord
import discord.webhook.async_ as webhook_async

_snowflakes = itertools.count(1_300_000_000_000_000_000)

EPHEMERAL = 64
MESSAGE_RESPONSE_TYPES = {4, 5, 7}  # message, deferred message ("thinking"), update message
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


def snowflake() -> int:
    return next(_snowflakes)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


@dataclasses.dataclass
class Sent:
    """One request the bot made to Discord's interaction/webhook endpoints."""

    method: str
    url: str
    token: str | None
    payload: dict[str, Any] | None
    files: dict[str, bytes]
    message_id: int | None = None

    @property
    def kind(self) -> str:
        if self.url.endswith("/callback"):
            return "callback"
        if self.url.endswith("/messages/@original"):
            return {"PATCH": "edit_original", "DELETE": "delete_original", "GET": "get_original"}[self.method]
        if "/messages/" in self.url:
            return {"PATCH": "edit_followup", "DELETE": "delete_followup", "GET": "get_followup"}[self.method]
        return "followup"

    @property
    def data(self) -> dict[str, Any]:
        """The message part of the payload (callbacks wrap it in `data`)."""
        if self.payload is None:
            return {}
        if self.kind == "callback":
            return self.payload.get("data") or {}
        return self.payload

    @property
    def content(self) -> str:
        return self.data.get("content") or ""

    @property
    def ephemeral(self) -> bool:
        return bool((self.data.get("flags") or 0) & EPHEMERAL)

    @property
    def allowed_mentions(self) -> dict[str, Any] | None:
        return self.data.get("allowed_mentions")


class Recorder:
    """Stands in for Discord's HTTP API behind interaction tokens."""

    def __init__(self, bot_user: dict[str, Any], application_id: int) -> None:
        self.bot_user = bot_user
        self.application_id = application_id
        self.sent: list[Sent] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.deleted: set[int] = set()
        self.interactions: dict[str, dict[str, Any]] = {}  # token -> INTERACTION_CREATE payload
        self._original: dict[str, int] = {}  # token -> message id of @original
        self._files_dir = tempfile.TemporaryDirectory(prefix="harness-attachments-")

    # --- what the bot sent

    def for_token(self, token: str) -> list[Sent]:
        return [s for s in self.sent if s.token == token]

    # --- the patched network method

    async def request(self, adapter: Any, route: Any, session: Any = None, *, payload=None, multipart=None,
                      files=None, **_: Any) -> Any:
        if multipart:
            for part in multipart:
                if part.get("name") == "payload_json":
                    payload = json.loads(part["value"])
        recorded_files: dict[str, bytes] = {}
        for file in files or []:
            file.reset(seek=0)
            recorded_files[file.filename] = file.fp.read()
        token = getattr(route, "webhook_token", None)
        sent = Sent(route.method, route.url, token, payload, recorded_files)
        self.sent.append(sent)
        return self._answer(sent)

    def _answer(self, sent: Sent) -> Any:
        interaction = self.interactions.get(sent.token or "", {})
        if sent.kind == "callback":
            kind = sent.payload["type"]
            answer: dict[str, Any] = {"interaction": {"id": interaction.get("id", "0"), "type": interaction.get("type", 2)}}
            if kind in MESSAGE_RESPONSE_TYPES:
                if kind == 7:  # updates the message the component is on
                    message_id = int(interaction["message"]["id"])
                else:
                    message_id = snowflake()
                self._original[sent.token] = message_id
                message = self._store(message_id, sent, thinking=kind == 5)
                answer["interaction"].update(
                    response_message_id=str(message_id),
                    response_message_loading=kind == 5,
                    response_message_ephemeral=sent.ephemeral,
                )
                answer["resource"] = {"type": kind, "message": message}
            elif kind == 6 and "message" in interaction:  # deferred update: @original is the component's message
                self._original[sent.token] = int(interaction["message"]["id"])
            return answer
        if sent.kind in {"edit_original", "get_original", "delete_original"}:
            message_id = self._original.get(sent.token)
            if message_id is None:
                raise AssertionError(f"{sent.kind} before any response for this interaction")
            sent.message_id = message_id
            if sent.kind == "delete_original":
                self.deleted.add(message_id)
                return None
            return self._store(message_id, sent) if sent.kind == "edit_original" else self.messages[message_id]
        if sent.kind == "followup":
            return self._store(snowflake(), sent)
        message_id = int(sent.url.rsplit("/", 1)[1])
        sent.message_id = message_id
        if sent.kind == "delete_followup":
            self.deleted.add(message_id)
            return None
        return self._store(message_id, sent) if sent.kind == "edit_followup" else self.messages[message_id]

    def _attachment(self, filename: str, files: dict[str, bytes]) -> dict[str, Any]:
        """An attachment as Discord's CDN would serve it: here a file:// url, so the bot can
        read back what it sent (Attachment.read goes through dpytest's get_from_cdn)."""
        attachment_id = snowflake()
        path = Path(self._files_dir.name) / str(attachment_id)
        path.write_bytes(files.get(filename, b""))
        return {"id": str(attachment_id), "filename": filename, "size": path.stat().st_size,
                "url": path.as_uri(), "proxy_url": path.as_uri()}

    def _store(self, message_id: int, sent: Sent, *, thinking: bool = False) -> dict[str, Any]:
        sent.message_id = message_id
        interaction = self.interactions.get(sent.token or "", {})
        message = self.messages.get(message_id) or {
            "id": str(message_id),
            "channel_id": interaction.get("channel_id", "0"),
            "author": self.bot_user,
            "content": "",
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 20,
            "flags": EPHEMERAL if sent.ephemeral else 0,
            "webhook_id": str(self.application_id),
            "application_id": str(self.application_id),
        }
        if interaction.get("guild_id"):
            message["guild_id"] = interaction["guild_id"]
        data = sent.data
        for key in ("content", "embeds", "components"):
            if key in data:
                message[key] = data[key] if data[key] is not None else ([] if key != "content" else "")
        if "attachments" in data:
            message["attachments"] = [self._attachment(a.get("filename", "file"), sent.files) for a in data["attachments"]]
        if thinking:
            message["flags"] = message["flags"] | 128  # LOADING
        message["edited_timestamp"] = None if thinking else now_iso()
        self.messages[message_id] = message
        return message


@dataclasses.dataclass
class Reply:
    """Everything the bot sent in answer to one interaction."""

    recorder: Recorder
    token: str
    task: asyncio.Task | None = None

    @property
    def sent(self) -> list[Sent]:
        return self.recorder.for_token(self.token)

    @property
    def callback(self) -> Sent:
        callbacks = [s for s in self.sent if s.kind == "callback"]
        assert callbacks, f"the bot did not respond to the interaction; sent: {self.sent}"
        return callbacks[0]

    @property
    def message_id(self) -> int | None:
        return self.recorder._original.get(self.token)

    @property
    def message(self) -> dict[str, Any]:
        """The current state of the response message (after every edit)."""
        message_id = self.message_id
        assert message_id is not None, f"no response message; sent: {self.sent}"
        return self.recorder.messages[message_id]

    @property
    def content(self) -> str:
        return self.message.get("content") or ""

    @property
    def final(self) -> Sent:
        """The last request that carried message content or files."""
        carrying = [s for s in self.sent if s.kind != "callback" or s.payload.get("type") in (4, 7)]
        assert carrying, f"nothing but a deferral was sent: {self.sent}"
        return carrying[-1]

    @property
    def ephemeral(self) -> bool:
        return self.callback.ephemeral

    @property
    def followups(self) -> list[Sent]:
        return [s for s in self.sent if s.kind == "followup"]

    def buttons(self) -> dict[str, dict[str, Any]]:
        """Buttons on the response message, by label."""
        found = {}
        for row in self.message.get("components", []):
            for component in row.get("components", []):
                if component.get("type") == 2:
                    found[component.get("label")] = component
        return found

    async def wait(self) -> "Reply":
        if self.task is not None:
            await self.task
        return self


class InteractionHarness:
    """Builds INTERACTION_CREATE payloads and feeds them to the bot's connection state."""

    def __init__(self, bot: discord.Client, guild: discord.Guild, channel: discord.TextChannel,
                 monkeypatch: Any) -> None:
        self.bot = bot
        self.guild = guild
        self.channel = channel
        self.application_id = bot.application_id or snowflake()
        self.recorder = Recorder(self._user_payload(bot.user, bot=True), self.application_id)
        recorder = self.recorder

        async def request(adapter, route, session=None, **kwargs):
            return await recorder.request(adapter, route, session, **kwargs)

        monkeypatch.setattr(webhook_async.AsyncWebhookAdapter, "request", request)
        self.upload_limit = DEFAULT_UPLOAD_LIMIT

    # --- payload pieces

    @staticmethod
    def _user_payload(user: discord.abc.User, *, bot: bool = False) -> dict[str, Any]:
        return {"id": str(user.id), "username": user.name, "discriminator": "0", "global_name": None,
                "avatar": None, "bot": bot}

    def _member_payload(self, member: discord.abc.User, permissions: discord.Permissions) -> dict[str, Any]:
        return {"user": self._user_payload(member), "roles": [], "joined_at": now_iso(), "deaf": False,
                "mute": False, "flags": 0, "permissions": str(permissions.value), "nick": None}

    def _base(self, kind: int, member: discord.abc.User, permissions: discord.Permissions | None,
              data: dict[str, Any]) -> dict[str, Any]:
        permissions = permissions or member_permissions()
        token = f"token-{snowflake()}"
        return {
            "id": str(snowflake()),
            "application_id": str(self.application_id),
            "type": kind,
            "token": token,
            "version": 1,
            "attachment_size_limit": self.upload_limit,
            "guild_id": str(self.guild.id),
            "channel_id": str(self.channel.id),
            "channel": {"id": str(self.channel.id), "type": 0, "guild_id": str(self.guild.id),
                        "name": self.channel.name, "position": 0, "permission_overwrites": [],
                        "nsfw": False, "parent_id": None, "permissions": str(permissions.value)},
            "member": self._member_payload(member, permissions),
            "app_permissions": str(discord.Permissions.all().value),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild.id)},
            "context": 0,
            "data": data,
        }

    # --- dispatch

    def dispatch(self, payload: dict[str, Any]) -> Reply:
        """Feed one INTERACTION_CREATE to discord.py; the returned Reply's task runs the handler."""
        self.recorder.interactions[payload["token"]] = payload
        before = asyncio.all_tasks()
        self.bot._connection.parse_interaction_create(payload)
        from bot.client import INTERACTION_TASKS  # the tasks that answer interactions, as the bot's drain knows them

        handlers = [t for t in asyncio.all_tasks() - before if t.get_name().startswith(INTERACTION_TASKS)]
        task = None
        if handlers:
            task = asyncio.ensure_future(asyncio.gather(*handlers))
        return Reply(self.recorder, payload["token"], task)

    async def slash(self, name: str, member: discord.abc.User, /, *, subcommand: str | None = None,
                    permissions: discord.Permissions | None = None, attachments: dict[str, dict] | None = None,
                    **options: Any) -> Reply:
        """Invoke `/name [subcommand] option:value...` and wait for the handler to finish."""
        return await self.start_slash(name, member, subcommand=subcommand, permissions=permissions,
                                      attachments=attachments, **options).wait()

    def start_slash(self, name: str, member: discord.abc.User, /, *, subcommand: str | None = None,
                    permissions: discord.Permissions | None = None, attachments: dict[str, dict] | None = None,
                    focused: str | None = None, **options: Any) -> Reply:
        option_list = []
        resolved: dict[str, Any] = {}
        for key, value in options.items():
            if value is None:
                continue
            if isinstance(value, discord.abc.User):  # a user option, resolved as Discord sends it
                resolved.setdefault("users", {})[str(value.id)] = self._user_payload(value)
                value = str(value.id)
                option_list.append({"name": key, "type": 6, "value": value})
                continue
            option = {"name": key, "type": _option_type(value), "value": value}
            if focused == key:
                option["focused"] = True
                option["type"] = 3
            option_list.append(option)
        for key, attachment in (attachments or {}).items():
            option_list.append({"name": key, "type": 11, "value": attachment["id"]})
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
        if subcommand:
            option_list = [{"name": subcommand, "type": 1, "options": option_list}]
        data = {"id": str(snowflake()), "name": name, "type": 1, "options": option_list}
        if resolved:
            data["resolved"] = resolved
        kind = 4 if focused else 2
        return self.dispatch(self._base(kind, member, permissions, data))

    async def autocomplete(self, name: str, member: discord.abc.User, focused: str, *,
                           subcommand: str | None = None, **options: Any) -> list[dict[str, Any]]:
        """The choices the bot offers while `member` types `options[focused]`."""
        reply = await self.start_slash(name, member, subcommand=subcommand, focused=focused, **options).wait()
        callback = reply.callback
        assert callback.payload["type"] == 8, callback.payload
        return callback.payload["data"]["choices"]

    async def message_menu(self, name: str, member: discord.abc.User, target: dict[str, Any], *,
                           permissions: discord.Permissions | None = None) -> Reply:
        """Right-click a message -> Apps -> `name`. `target` is a message payload (see `message_payload`)."""
        data = {"id": str(snowflake()), "name": name, "type": 3, "target_id": target["id"],
                "resolved": {"messages": {target["id"]: target}}}
        return await self.dispatch(self._base(2, member, permissions, data)).wait()

    def start_click(self, reply_or_message: Reply | dict[str, Any], label: str, member: discord.abc.User, *,
                    permissions: discord.Permissions | None = None) -> Reply:
        message = reply_or_message.message if isinstance(reply_or_message, Reply) else reply_or_message
        button = next((c for row in message.get("components", []) for c in row.get("components", [])
                       if c.get("label") == label), None)
        assert button is not None, f"no button {label!r} on message: {message.get('components')}"
        data = {"custom_id": button["custom_id"], "component_type": 2}
        payload = self._base(3, member, permissions, data)
        payload["message"] = message
        return self.dispatch(payload)

    async def click(self, reply_or_message: Reply | dict[str, Any], label: str, member: discord.abc.User, *,
                    permissions: discord.Permissions | None = None) -> Reply:
        return await self.start_click(reply_or_message, label, member, permissions=permissions).wait()

    def start_submit_modal(self, opened_by: Reply, member: discord.abc.User, values: dict[str, str]) -> Reply:
        """Fill the modal the bot opened (by text-input label) and submit it."""
        callback = opened_by.callback
        assert callback.payload["type"] == 9, f"the bot did not open a modal: {callback.payload}"
        modal = callback.payload["data"]
        components = [_submitted(component, values) for component in modal["components"]]
        data = {"custom_id": modal["custom_id"], "components": components}
        return self.dispatch(self._base(5, member, None, data))

    async def submit_modal(self, opened_by: Reply, member: discord.abc.User, values: dict[str, str]) -> Reply:
        return await self.start_submit_modal(opened_by, member, values).wait()

    # --- helpers for payloads tests need

    def message_payload(self, author: discord.abc.User, content: str = "",
                        attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "id": str(snowflake()), "channel_id": str(self.channel.id), "guild_id": str(self.guild.id),
            "author": self._user_payload(author), "content": content, "timestamp": now_iso(),
            "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": [],
            "mention_roles": [], "attachments": attachments or [], "embeds": [], "pinned": False, "type": 0,
            "components": [],
        }


def attachment_payload(path: Any, *, size: int | None = None, filename: str | None = None) -> dict[str, Any]:
    """A resolved attachment whose bytes come from a local file (dpytest's HTTP reads file:// urls)."""
    from pathlib import Path

    path = Path(path)
    return {"id": str(snowflake()), "filename": filename or path.name,
            "size": path.stat().st_size if size is None else size,
            "url": path.resolve().as_uri(), "proxy_url": path.resolve().as_uri()}


def member_permissions() -> discord.Permissions:
    return discord.Permissions(send_messages=True, read_messages=True, attach_files=True,
                               use_application_commands=True, read_message_history=True)


def admin_permissions() -> discord.Permissions:
    permissions = member_permissions()
    permissions.manage_guild = True
    return permissions


def _option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3


def _submitted(component: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    kind = component.get("type")
    if kind == 1:
        return {"type": 1, "components": [_submitted(c, values) for c in component.get("components", [])]}
    if kind == 18:  # label wrapping one component
        inner = dict(component["component"])
        inner.setdefault("label", component.get("label"))
        return {"type": 18, "component": _submitted(inner, values)}
    if kind == 4:
        label = component.get("label")
        assert label in values, f"no value given for text input {label!r}"
        return {"type": 4, "custom_id": component["custom_id"], "value": values[label]}
    return {"type": kind, "custom_id": component.get("custom_id")}
