"""The config in force: the file's objects (provisioned) and the store's (managed, created over the API),
judged together by the config file's own validator and swapped atomically on any change. The one owner of
that config: SIGHUP reloads and API changes both go through it, one at a time; every other part reads it
through `config` and keeps no copy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from feedd import events, log
from feedd.config.managed import keep_secrets, relative_issues, shown
from feedd.config.parse import FileTree, build, read_file
from feedd.config.values import Config
from feedd.credentials import hash_password, verify_password
from feedd.errors import ConfigError, ConflictError, InvalidError, NotFoundError, StaleError
from feedd.model import AuditAction, AuditEntry, ManagedObject, ObjectKind, RunStatus, utcnow
from feedd.store import RunQuery, Store

FILE_ACTOR = "config file"
# A run in one of these still needs its pipeline and connection as they are.
_LIVE_STATUSES = (RunStatus.QUEUED, RunStatus.PROCESSING, RunStatus.HELD, RunStatus.NEEDS_REVIEW)


class Source(StrEnum):
    FILE = "file"
    API = "api"


class InvalidObject(InvalidError):
    """A body the config's validator refused; `details` locate each problem inside the object."""

    code = "invalid_config"


class StaleVersion(StaleError):
    """An `If-Match` version that is no longer the object's."""


@dataclass(frozen=True, slots=True)
class Shown:
    """An object as the API answers it (never a secret)."""

    kind: ObjectKind
    name: str
    source: Source
    body: dict[str, Any]
    version: int | None = None
    created_at: Any = None
    updated_at: Any = None


@dataclass(frozen=True, slots=True)
class Outcome:
    shown: Shown
    changed: bool


Apply = Callable[[Config], Awaitable[None]]


class Live:
    def __init__(self, source: FileTree, managed: Sequence[ManagedObject], config: Config, store: Store,
                 apply: Apply, notify: Callable[[], None] = lambda: None) -> None:
        self._source = source
        self._managed = {(o.kind, o.name): o for o in managed}
        self._config = config
        self._store = store
        self._apply = apply
        self._notify = notify
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, source: FileTree, config: Config, store: Store, apply: Apply) -> Live:
        """`config` (the file's, as loaded) with the store's objects joined to it; ConfigError when they clash
        or do not judge well together."""
        managed = await store.managed_objects()
        if managed:
            config = await asyncio.to_thread(build, source, managed)
        return cls(source, managed, config, store, apply)

    def on_change(self, notify: Callable[[], None]) -> None:
        """Called after each change has queued its events."""
        self._notify = notify

    @property
    def config(self) -> Config:
        return self._config

    # Reading

    def source_of(self, kind: ObjectKind, name: str) -> Source | None:
        if (kind, name) in self._managed:
            return Source.API
        return Source.FILE if name in self._config.bodies.get(kind.section, {}) else None

    def get(self, kind: ObjectKind, name: str) -> Shown | None:
        source = self.source_of(kind, name)
        if source is None:
            return None
        obj = self._managed.get((kind, name))
        body = shown(kind.section, obj.body if obj else self._config.bodies[kind.section][name])
        if obj is None:
            return Shown(kind, name, source, body)
        return Shown(kind, name, source, body, obj.version, obj.created_at, obj.updated_at)

    def all(self, kind: ObjectKind) -> list[Shown]:
        return [s for name in self._config.bodies.get(kind.section, {}) if (s := self.get(kind, name))]

    # Changing

    async def reload_file(self) -> bool:
        """Re-read the config file (SIGHUP). A bad file, or one that clashes with a managed name, is logged
        with all its errors and the running config stays."""
        logger = log.get()
        async with self._lock:
            try:
                source = await asyncio.to_thread(read_file, self._source.path)
                config = await asyncio.to_thread(build, source, list(self._managed.values()))
            except ConfigError as exc:
                for issue in exc.issues:
                    logger.error("config error", error=str(issue))
                logger.error("reload failed: keeping the running config", errors=len(exc.issues))
                return False
            await self._swap(config)
            self._source = source
            logger.info("config reloaded", config=str(config.path), connections=len(config.connections),
                        pipelines=len(config.pipelines))
            entry = AuditEntry(FILE_ACTOR, AuditAction.RELOAD, "config", str(source.path), None,
                               {"files": list(source.files)})
            await self._store.add_audit(entry, self._events(entry))
            self._notify()
            return True

    async def refresh(self) -> bool:
        """Take in the objects another node changed in the shared store: True when the config in force
        changed. Objects that no longer judge well with this node's file are logged, and the running config
        stays (the node that wrote them judged them against the same file, so that means the files differ)."""
        async with self._lock:
            managed = {(o.kind, o.name): o for o in await self._store.managed_objects()}
            if {k: o.version for k, o in managed.items()} == {k: o.version for k, o in self._managed.items()}:
                return False
            try:
                config = await asyncio.to_thread(build, self._source, list(managed.values()))
            except ConfigError as exc:
                for issue in exc.issues:
                    log.get().error("config error", error=str(issue))
                log.get().error("objects changed by another node do not judge well here: keeping the running "
                                "config", errors=len(exc.issues))
                return False
            await self._swap(config)
            self._managed = managed
            log.get().info("objects refreshed", connections=len(config.connections), pipelines=len(config.pipelines))
            return True

    async def create(self, kind: ObjectKind, name: str, body: Mapping[str, Any], actor: str,
                     dry_run: bool = False) -> Outcome:
        async with self._lock:
            if (source := self.source_of(kind, name)) is not None:
                raise ConflictError(f"{kind} {name!r} already exists" + (
                    " in the config file" if source is Source.FILE else ""),
                    code="provisioned" if source is Source.FILE else "exists")
            stored = await self._secrets(kind, dict(body), None)
            now = utcnow()
            obj = ManagedObject(kind, name, stored, 1, now, now)
            config = await self._judge({**self._managed, (kind, name): obj}, kind, name)
            if not dry_run:
                entry = AuditEntry(actor, AuditAction.CREATE, str(kind), name, None, shown(kind.section, stored))
                await self._store.save_object(obj, expect=None, audit=entry, events=self._events(entry, config))
                self._managed[(kind, name)] = obj
                await self._swap(config)
                self._notify()
            return Outcome(self._shown(obj), True)

    async def update(self, kind: ObjectKind, name: str, patch: Mapping[str, Any], actor: str,
                     if_match: int | None = None, dry_run: bool = False) -> Outcome:
        """The keys given replace those keys whole; a key given as null goes back to its default."""
        async with self._lock:
            old = self._own(kind, name, if_match)
            body = {k: v for k, v in {**old.body, **patch}.items() if v is not None}
            body = await self._secrets(kind, body, old.body)
            if body == old.body:
                return Outcome(self._shown(old), False)
            obj = replace(old, body=body, version=old.version + 1, updated_at=utcnow())
            config = await self._judge({**self._managed, (kind, name): obj}, kind, name)
            if not dry_run:
                entry = AuditEntry(actor, AuditAction.UPDATE, str(kind), name, shown(kind.section, old.body),
                                   shown(kind.section, body))
                if not await self._store.save_object(obj, expect=old.version, audit=entry,
                                                     events=self._events(entry, config)):
                    raise StaleVersion(f"{kind} {name!r} was changed meanwhile; read it again")
                self._managed[(kind, name)] = obj
                await self._swap(config)
                self._notify()
            return Outcome(self._shown(obj), True)

    async def delete(self, kind: ObjectKind, name: str, actor: str, if_match: int | None = None) -> None:
        async with self._lock:
            old = self._own(kind, name, if_match)
            await self._refuse_if_used(kind, name)
            managed = {k: v for k, v in self._managed.items() if k != (kind, name)}
            config = await self._judge(managed, kind, name)
            entry = AuditEntry(actor, AuditAction.DELETE, str(kind), name, shown(kind.section, old.body), None)
            if not await self._store.delete_object(kind, name, expect=old.version, audit=entry,
                                                   events=self._events(entry, config)):
                raise StaleVersion(f"{kind} {name!r} was changed meanwhile; read it again")
            self._managed = managed
            await self._swap(config)
            self._notify()

    # Inside

    def _shown(self, obj: ManagedObject) -> Shown:
        return Shown(obj.kind, obj.name, Source.API, shown(obj.kind.section, obj.body), obj.version,
                     obj.created_at, obj.updated_at)

    def _own(self, kind: ObjectKind, name: str, if_match: int | None) -> ManagedObject:
        source = self.source_of(kind, name)
        if source is None:
            raise NotFoundError(f"no {kind} {name!r}")
        if source is Source.FILE:
            raise ConflictError(f"{kind} {name!r} is defined in the config file ({', '.join(self._config.files)}): "
                                f"change it there and reload", code="provisioned")
        obj = self._managed[(kind, name)]
        if if_match is not None and if_match != obj.version:
            raise StaleVersion(f"{kind} {name!r} is at version {obj.version}, not {if_match}; read it again")
        return obj

    async def _refuse_if_used(self, kind: ObjectKind, name: str) -> None:
        config = self._config
        users: list[str] = []
        if kind is ObjectKind.SCHEMA:
            users = [f"pipeline {p.name!r}" for p in config.pipelines.values() if p.schema == name]
        elif kind is ObjectKind.CONNECTION:
            users = [f"pipeline {p.name!r}" for p in config.pipelines.values() if p.connection == name]
            users += [f"API key {k.name!r}" for k in config.http.api_keys if name in k.connections]
        if users:
            raise ConflictError(f"{kind} {name!r} is used by {', '.join(users)}", code="in_use")
        if kind is not ObjectKind.SCHEMA:
            query = RunQuery(pipeline=name) if kind is ObjectKind.PIPELINE else RunQuery(connection=name)
            busy, _ = await self._store.list_runs(replace(query, statuses=_LIVE_STATUSES, limit=1))
            if busy:
                raise ConflictError(f"{kind} {name!r} has runs not finished yet (run {busy[0].run_id} is "
                                    f"{busy[0].status})", code="in_use")

    async def _secrets(self, kind: ObjectKind, body: dict[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
        """A body as stored: a plain `password` hashed (or the stored hash kept when it is the same password),
        and `<redacted>` secrets taken from the stored object."""
        if old is not None:
            body = keep_secrets(body, old)
        if kind is ObjectKind.CONNECTION and "password" in body:
            password = body.pop("password")
            if not isinstance(password, str) or not password:
                raise InvalidObject("the object is not valid", [
                    {"path": "password", "message": "expected a non-empty string"}])
            known = old.get("password_hash") if old else None
            if isinstance(known, str) and await asyncio.to_thread(verify_password, known, password):
                body["password_hash"] = known
            else:
                try:
                    body["password_hash"] = await asyncio.to_thread(hash_password, password)
                except ValueError as exc:
                    raise InvalidObject("the object is not valid", [
                        {"path": "password", "message": str(exc)}]) from None
        return body

    async def _judge(self, managed: Mapping[tuple[ObjectKind, str], ManagedObject], kind: ObjectKind,
                     name: str) -> Config:
        """The config the change would make, judged by the config file's own validator, off the loop."""
        try:
            return await asyncio.to_thread(build, self._source, list(managed.values()))
        except ConfigError as exc:
            details = relative_issues(exc.issues, kind.section, name)
            first = details[0] if details else {"path": "", "message": "invalid"}
            where = f"{first['path']}: " if first["path"] else ""
            raise InvalidObject(f"{kind} {name!r} is not valid: {where}{first['message']}", details) from None

    async def _swap(self, config: Config) -> None:
        await self._apply(config)
        self._config = config

    def _events(self, entry: AuditEntry, config: Config | None = None) -> list[Any]:
        return events.make(config or self._config, "config.changed", {
            "kind": entry.kind, "name": entry.name, "action": str(entry.action), "actor": entry.actor})

