"""Storage: the only module that talks to MongoDB (pymongo).

``get_storage()`` caches one :class:`Storage` per app context on ``flask.g``;
the pymongo client itself is created once per process (it is thread-safe and
pools connections). Tests inject a mongomock client via ``MONGO_CLIENT``.

Collections (see docs/README-api.md):

- ``patients``  one per MRN (unique), with a denormalised ``latest`` record summary.
- ``rooms``     one per room (``_id`` = room number): the latest occupant, the latest
  record summary and the latest pressure command, so the monitor wall is one query;
  and the rooms version (``_id`` 0, no room's number), bumped after every change of a
  room, in the same round trip as an upload's room update.
- ``records``   one document per CPAP upload (never updated: no growing arrays).
- ``images``    flow images (BSON binary), ``_id`` = the record's id; read only on request.
- ``commands``  pressure commands per room.
- ``audit``     insert-only trail of every pressure command, acknowledgement and
  patient change: who (token name and role), when, from where, old and new value.
- ``uploads``   one claim per client-supplied ``upload_id`` (``_id`` = the key): the
  plan of that upload decided up front (record id, time, audit entry ids, the state
  before, who), so a retry with the same key answers the same record or completes
  an interrupted upload instead of storing it twice.
- ``users``     people who sign in (``_id`` = user name): display name, role, scrypt
  password hash, disabled state (managed with ``python -m sleeplab.api.accounts``).
- ``sessions``  sign-in sessions (``_id`` = SHA-256 of the session token, never the
  token): the person, role, expiry and, once signed out, when.

Uploads are idempotent steps keyed by ids decided before the first write: the
image, the record and each audit entry are inserted with their planned ``_id``
(a ``DuplicateKeyError`` means an earlier attempt already wrote it), summaries are
guarded by their time stamp, and a patient's ``record_count`` is counted from the
records when read, so it cannot drift from them whatever was interrupted.

Every write is one atomic operation (insert, or update with ``$set``/``$inc``/
``$setOnInsert``, possibly an upsert). Denormalised summaries are guarded by their
time stamp in the filter, so an older upload never overwrites a newer one.

Values that are rewritten after insert and must keep their BSON type (dates,
booleans) live inside sub-documents that are ``$set`` as a whole: nx-27017, the
local stand-in, stores a top-level date or boolean ``$set`` on an existing
document as a string or an integer.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass
from types import MappingProxyType

import pymongo
from bson import Binary, ObjectId
from bson.errors import InvalidId
from flask import current_app
from pymongo import InsertOne, ReturnDocument, UpdateMany, UpdateOne
from pymongo.errors import DuplicateKeyError

DEFAULT_URI = "mongodb://127.0.0.1:27017/sleeplab"
DEFAULT_DATABASE = "sleeplab"

#: Any failure of the database (unreachable, timeout, disk full, ...); the API answers
#: 503, or 507 when :func:`is_storage_full` says the database has no room to write.
DatabaseError = pymongo.errors.PyMongoError

#: MongoDB's OutOfDiskSpace error code.
OUT_OF_DISK_CODES = frozenset({14031})
#: How a full disk is worded by SQLite under nx-27017 ("database or disk is full", code 8),
#: MongoDB and the operating system (ENOSPC).
OUT_OF_DISK_WORDS = ("disk is full", "disk full", "no space left on device",
                     "out of disk space", "outofdiskspace", "enospc")
#: Size of the health check's write probe: a few SQLite pages, so a database without
#: room for a small record fails it (an upload with a large image can fail first: the
#: API also remembers such a refusal for /health).
WRITE_PROBE_BYTES = 8 * 1024

#: A record's details: stored in the record document, never copied into the patient and
#: room summaries nor read with lists of records (an 8-hour night's series and events are
#: tens of KB; the wall reads every room's summary).
RECORD_DETAILS = ("events", "series")
#: What lists of records read: all but the details. Read-only, each query gets a copy
#: (:func:`record_list_fields`): mongomock adds ``_id`` to the projection it is given,
#: which made this one an inclusion (bare ids) for nx-27017 in the same process.
RECORD_LIST_FIELDS = MappingProxyType({field: 0 for field in RECORD_DETAILS})

#: Raw chunks of live nights: a time-series collection where the server has them
#: (MongoDB 5+), else a plain one (nx-27017 accepts the option and ignores it).
CHUNKS_COLLECTION = "live_chunks"
CHUNK_ZLIB_LEVEL = 1                # recording text shrinks ~4x in well under a millisecond

#: Newest first; ``_id`` (an ObjectId, increasing) breaks ties within a millisecond.
NEWEST_RECORDS = [("received_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
NEWEST_COMMANDS = [("commanded_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
NEWEST_AUDIT = [("at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]

#: Who acted when no token is configured (open mode) or the caller is unknown.
ANONYMOUS = {"name": "anonymous", "role": None, "address": None}

#: The ``_id`` of the rooms version's document in ``rooms`` (room numbers start at 1).
ROOMS_VERSION_ID = 0

#: MongoDB's duplicate key error code (an insert of a planned ``_id`` already stored).
DUPLICATE_KEY = 11000

#: The audit entries an upload may write, each with an id planned up front.
AUDIT_SLOTS = ("patient", "room_from", "room_to", "record")

log = logging.getLogger(__name__)


def utc_now() -> dt.datetime:
    """Current UTC time, truncated to the millisecond BSON dates keep."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: The time stamps that guard updates, each with its integer twin (ms since the epoch).
#: Guards compare the twins: nx-27017 compares dates in a filter to the second only, so
#: an older upload of the same second passed a date guard and overwrote a newer summary.
STAMP_TWINS = {"updated.at": "updated.ms", "latest.received_at": "latest.ms",
               "patient.since": "patient.ms", "command.commanded_at": "command.ms"}


def ms(moment: dt.datetime | None) -> int | None:
    """``moment`` as whole milliseconds since the epoch (the guards' exact comparison)."""
    if moment is None:
        return None
    return (as_utc(moment) - EPOCH) // dt.timedelta(milliseconds=1)


def not_newer(stamp_field: str, now: dt.datetime) -> dict:
    """Filter: the document's ``stamp_field`` is not newer than ``now`` (exactly)."""
    return {STAMP_TWINS[stamp_field]: {"$lte": ms(now)}}


def older(stamp_field: str, now: dt.datetime) -> dict:
    """Filter: the document's ``stamp_field`` is older than ``now`` (strictly)."""
    return {STAMP_TWINS[stamp_field]: {"$lt": ms(now)}}


def as_utc(value):
    """A datetime from the database as an aware UTC datetime (mongomock returns naive)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)
    return value


def parse_object_id(value: str) -> ObjectId | None:
    """The ObjectId spelt by ``value``, or None when it is not one."""
    try:
        return ObjectId(value) if isinstance(value, str) and len(value) == 24 else None
    except InvalidId:
        return None


@dataclass(frozen=True)
class Image:
    data: bytes
    content_type: str
    etag: str


@dataclass(frozen=True)
class UploadResult:
    patient: dict
    record: dict | None
    created: bool
    replay: bool = False   # an upload_id seen before: nothing new was stored


def is_storage_full(exc: BaseException) -> bool:
    """True when a database error says its disk (or database file) is full."""
    if getattr(exc, "code", None) in OUT_OF_DISK_CODES:
        return True
    details = getattr(exc, "details", None)
    text = f"{exc} {details if details is not None else ''}".lower()
    return any(words in text for words in OUT_OF_DISK_WORDS)


def is_slow_query(exc: BaseException) -> bool:
    """True when an operation ran out of the time :func:`time_limit` gave it (the
    server stopped it, or the client gave up waiting), not when the database is
    unreachable."""
    return (isinstance(exc, (pymongo.errors.ExecutionTimeout, pymongo.errors.NetworkTimeout))
            and not isinstance(exc, pymongo.errors.ServerSelectionTimeoutError))


def time_limit(seconds: float):
    """A context in which every database operation must finish within ``seconds``
    (MongoDB stops it with ``maxTimeMS``; the client stops waiting either way, so a
    stand-in that ignores ``maxTimeMS`` frees the worker too)."""
    return pymongo.timeout(seconds)


def exactly(value: int) -> dict:
    """The filter for one MRN or room number.

    ``$eq`` matches what a bare value matches on MongoDB, but nx-27017 turns only the
    ``$eq`` form into SQL that an index such as ``(mrn, received_at)`` serves: for a
    bare value it also searches inside arrays and scans the whole collection (0.2 s
    per query at 200,000 records instead of 5 ms).
    """
    return {"$eq": value}


class UploadConflict(Exception):
    """An ``upload_id`` already used for another upload (other MRN, room or values)."""


def fingerprint(*parts) -> str:
    """A digest of what an upload asks to store (checked when its key comes again)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str)
                          .encode("utf-8")).hexdigest()


def upload_digest(mrn: int, room: int, name: str | None, given: dict | None,
                  content_sha256: str | None) -> str:
    """The one recipe of an upload's digest: who, where, the values the caller gave and
    the SHA-256 of the content it sent (an image, or a raw recording)."""
    return fingerprint(mrn, room, name, given, content_sha256)


def on_a_server(db) -> bool:
    """A database server behind pymongo (MongoDB, nx-27017), not mongomock, which has
    neither database commands nor the client-level bulkWrite."""
    return isinstance(db.client, pymongo.MongoClient)


def client_bulk_write(db, writes: list[tuple[object, object]]):
    """Writes to several collections, in order, in one round trip (MongoDB 8.0's
    client-level ``bulkWrite``; nx-27017 has it too). ``writes``: (collection, model)
    pairs, each model a function of ``namespace`` giving a pymongo write model, e.g.
    ``functools.partial(InsertOne, doc)``. Returns the verbose
    :class:`pymongo.results.ClientBulkWriteResult`, or None when the server or client has
    no such command (mongomock, MongoDB before 8.0): the caller then writes one
    collection at a time. A failed write stops the ones after it and raises."""
    client = db.client
    if not (on_a_server(db) and getattr(client, CLIENT_BULK_FLAG, True)):
        return None
    models = [model(namespace=f"{db.name}.{collection.name}") for collection, model in writes]
    try:
        return client.bulk_write(models, ordered=True, verbose_results=True)
    except pymongo.errors.InvalidOperation:  # raised before sending: a server before 8.0
        setattr(client, CLIENT_BULK_FLAG, False)
        return None
    except pymongo.errors.OperationFailure as exc:
        # The command refused as a whole, before any write: not authorised for the API's
        # role, or unknown to the server.
        if getattr(exc, "error", None) is not None:  # ClientBulkWriteException
            exc = exc.error
        if getattr(exc, "code", None) not in CLIENT_BULK_REFUSED_CODES:
            raise
        log.warning("one-round-trip uploads off: the database refused bulkWrite (%s)", exc)
        setattr(client, CLIENT_BULK_FLAG, False)
        return None


#: Unauthorized, CommandNotFound, CommandNotSupported: bulkWrite refused before writing.
CLIENT_BULK_REFUSED_CODES = frozenset({13, 59, 115})
#: Set (False) on a client once its server turned the client-level bulkWrite down.
CLIENT_BULK_FLAG = "_sleeplab_client_bulk"


def _insert_once(collection, doc: dict) -> bool:
    """Insert a document with a planned ``_id``; False when it is already there."""
    try:
        collection.insert_one(doc)
        return True
    except DuplicateKeyError:
        return False


class Storage:
    """Every query of the application. Documents out are plain dicts (internal form)."""

    def __init__(self, db):
        self.db = db
        self.patients = db["patients"]
        self.rooms = db["rooms"]
        self.records = db["records"]
        self.images = db["images"]
        self.commands = db["commands"]
        self.meta = db["meta"]
        self.audit = db["audit"]
        self.uploads = db["uploads"]
        self.users = db["users"]
        self.sessions = db["sessions"]
        self.nights = db["live_nights"]
        self.chunks = db[CHUNKS_COLLECTION]
        self.chunks_timeseries = False

    # -- set-up ------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            self.db.command("ping")
            return True
        except DatabaseError:
            return False

    def write_probe(self) -> None:
        """Write a few KB into ``meta`` (one document, overwritten each time); raises
        the database's error when it cannot write (e.g. its disk is full)."""
        self.meta.update_one({"_id": "health"}, {"$set": {"probe": {
            "at": utc_now(), "pad": os.urandom(WRITE_PROBE_BYTES // 2).hex()}}}, upsert=True)

    def ensure_indexes(self) -> None:
        """Create the indexes (idempotent: safe on every start and in every worker)."""
        desc, asc = pymongo.DESCENDING, pymongo.ASCENDING
        self.patients.create_index([("mrn", asc)], unique=True, name="mrn_unique")
        self.patients.create_index([("room", asc), ("mrn", asc)], name="room_mrn")
        self.records.create_index([("room", asc), ("received_at", desc)], name="room_received")
        self.records.create_index([("mrn", asc), ("received_at", desc)], name="mrn_received")
        self.commands.create_index([("room", asc), ("commanded_at", desc)],
                                   name="room_commanded")
        self.audit.create_index([("room", asc), ("at", desc)], name="room_at")
        self.sessions.create_index([("user", asc)], name="user")
        self._ensure_chunk_collection()
        self.nights.create_index([("room", asc), ("started_at", desc)], name="room_started")
        self._backfill_applied()
        self._backfill_stamp_twins()

    def _ensure_chunk_collection(self) -> None:
        """Create the raw-chunk collection once: time-series when the server can, so
        ``chunks_timeseries`` says which (the README's live-night section)."""
        try:
            if CHUNKS_COLLECTION not in self.db.list_collection_names():
                self.db.create_collection(CHUNKS_COLLECTION, timeseries={
                    "timeField": "at", "metaField": "session", "granularity": "seconds"})
            options = self.chunks.options() or {}
        except pymongo.errors.CollectionInvalid:  # another worker created it first
            options = {}
        except (pymongo.errors.OperationFailure, NotImplementedError, TypeError) as exc:
            # no time-series here, or no right to list collections (a role without
            # listCollections), or mongomock: the first insert makes a plain collection
            log.info("live chunks in a plain collection (%s)", exc)
            options = {}
        self.chunks_timeseries = bool(options.get("timeseries"))
        self.chunks.create_index([("session", pymongo.ASCENDING), ("seq", pymongo.ASCENDING)],
                                 name="session_seq")

    def _backfill_stamp_twins(self) -> None:
        """Documents stored before the integer twins of the guarding stamps get them
        (once), so their next update is guarded like any other."""
        for collection, fields in ((self.patients, ("updated.at", "latest.received_at")),
                                   (self.rooms, ("patient.since", "latest.received_at",
                                                 "command.commanded_at"))):
            for doc in collection.find({}, {"updated": 1, "latest": 1, "patient": 1,
                                            "command": 1}):
                missing = {}
                for field in fields:
                    parent, leaf = field.split(".")
                    part = doc.get(parent)
                    if isinstance(part, dict) and "ms" not in part:
                        missing[STAMP_TWINS[field]] = ms(part.get(leaf))
                if missing:
                    collection.update_one({"_id": doc["_id"]}, {"$set": missing})

    def _backfill_applied(self) -> None:
        """Rooms stored before rooms carried ``applied`` get it from the commands (once:
        afterwards every room has the field), so the wall never has to ask each room's
        command history for the pressure in force."""
        for room in self.rooms.find({}, {"patient": 1, "applied": 1}):
            if "applied" in room or room["_id"] == ROOMS_VERSION_ID:
                continue
            mrn = occupant_mrn(room)
            applied = None if mrn is None else self.commands.find_one(
                {"room": room["_id"], "mrn": mrn, "ack": {"$ne": None}, "cancelled": None},
                sort=[("commanded_at", pymongo.DESCENDING)])
            self.rooms.update_one({"_id": room["_id"], "applied": {"$exists": False}},
                                  {"$set": {"applied": applied and command_summary(applied)}})

    # -- audit trail -------------------------------------------------------------
    def _audit(self, actor: dict | None, action: str, room: int, mrn: int | None, now,
               old=None, new=None, entry_id: ObjectId | None = None) -> None:
        """Append one audit entry (the collection is only ever inserted into). With
        ``entry_id`` (planned by an upload) a repeated attempt does not add it again."""
        self._append_audit([audit_entry(actor, action, room, mrn, now, old, new, entry_id)])

    def _append_audit(self, entries: list[dict]) -> None:
        """Insert audit entries in one round trip; those an earlier attempt of the same
        upload wrote already (same planned ``_id``) are left as they are."""
        if not entries:
            return
        try:
            self.audit.insert_many(entries, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            if any(error.get("code") != DUPLICATE_KEY
                   for error in exc.details.get("writeErrors", ())):
                raise

    def audit_trail(self, room: int, limit: int) -> list[dict]:
        """A room's audit entries, newest first."""
        return list(self.audit.find({"room": exactly(room)}).sort(NEWEST_AUDIT).limit(limit))

    # -- patients and uploads ----------------------------------------------------
    def _guarded_set(self, collection, key: dict, stamp_field: str, now, values: dict,
                     upsert: bool = False, on_insert: dict | None = None,
                     projection: dict | None = None) -> dict | None:
        """``$set`` values unless the document already holds something newer.

        Each step is one atomic update; the filters never use ``$or`` (nx-27017 drops
        the other conditions of a filter that has one, and updates the wrong document).
        1. set where the stamp is not newer than ``now``; 2. otherwise set where there
        is no value yet (or insert the document when ``upsert``, as ``on_insert`` if
        given); 3. if a racing writer got in between (an upsert losing the race on a
        unique index), try step 1 once more. Whatever is left is newer than ours.

        Returns the document as it was just before *this* call changed it (fields in
        ``projection``), read atomically with the change: the audit trail's "old" value
        is then what was really replaced, even when uploads race. None when the call
        inserted the document or changed nothing (something newer was there).
        """
        def set_where(condition: dict) -> dict | None:
            return collection.find_one_and_update(
                condition, {"$set": values}, projection=projection or {"_id": 1},
                return_document=ReturnDocument.BEFORE)

        not_newer_than_now = dict(key, **not_newer(stamp_field, now))
        replaced = set_where(not_newer_than_now)
        if replaced is not None:
            return replaced
        if upsert:
            try:
                if collection.update_one(key, {"$setOnInsert": on_insert or values},
                                         upsert=True).upserted_id is not None:
                    return None
            except DuplicateKeyError:
                pass  # another writer inserted it first
        else:
            replaced = set_where(dict(key, **{stamp_field.split(".")[0]: None}))
            if replaced is not None:
                return replaced
        return set_where(not_newer_than_now)

    def upload(self, mrn: int, room: int, name: str | None = None,
               metrics: dict | None = None, image: tuple[bytes, str] | None = None,
               actor: dict | None = None, upload_id: str | None = None,
               digest: str | None = None, with_record_count: bool = True) -> UploadResult:
        """Create or update a patient and, when ``metrics`` are given, add one record.

        ``image`` is ``(bytes, content_type)`` and only stored with a record. ``actor``
        (``{name, role, address}``) is who the audit trail names for the changes.

        ``upload_id`` (validated by the caller) makes the upload idempotent: the first
        call claims the key with its plan; a later call with the key answers the same
        record (``replay``) and writes nothing, or completes the plan when an earlier
        attempt was interrupted. ``digest`` (default: a digest of the arguments) is what
        a repeated key must match; another MRN, room or digest raises UploadConflict.
        ``with_record_count=False`` leaves ``record_count`` out of the answer's patient
        (one query less, for a caller that does not show it).
        """
        now = utc_now()
        if digest is None and upload_id is not None:  # only a key's claim keeps it
            digest = upload_digest(mrn, room, name, metrics,
                                   hashlib.sha256(image[0]).hexdigest() if image else None)
        # The state before, kept in an upload_id's claim for the audit trail's old values
        # should a retry complete this upload (without a key nothing reads it; a live
        # upload audits what its own update replaced).
        before = (self.patients.find_one({"mrn": mrn}, {"_id": 0, "name": 1, "room": 1,
                                                        "latest": 1})
                  if upload_id is not None else None)
        plan = {"_id": upload_id or str(ObjectId()), "mrn": mrn, "room": room, "at": now,
                "record_id": ObjectId() if metrics is not None else None,
                "audit_ids": {slot: ObjectId() for slot in AUDIT_SLOTS},
                "before": before and {"name": before.get("name"), "room": before.get("room"),
                                      "latest": audit_record(before.get("latest"))},
                "who": dict(actor or ANONYMOUS), "digest": digest, "done": None}
        replay = False
        if upload_id is not None and not _insert_once(self.uploads, plan):
            plan = self.uploads.find_one({"_id": upload_id})
            if plan is None:  # removed in between (by hand): the client's retry claims anew
                raise pymongo.errors.OperationFailure(f"upload claim {upload_id} vanished")
            self._check_same_upload(plan, mrn, room, digest)
            replay = True
            if plan.get("done") is not None:  # complete: answer it, write nothing
                record = (self.records.find_one({"_id": plan["record_id"]},
                                                record_list_fields())
                          if plan.get("record_id") else None)
                return UploadResult(self.get_patient(mrn), record, False, replay=True)
        created, record, patient = self._carry_out(plan, name, metrics, image,
                                                   resumed=replay)
        if upload_id is not None:
            self.uploads.update_one({"_id": upload_id, "done": None},
                                    {"$set": {"done": {"at": utc_now()}}})
        if with_record_count:
            patient = self._with_record_counts([patient])[0]
        return UploadResult(patient, record, created and not replay, replay=replay)

    @staticmethod
    def _check_same_upload(plan: dict, mrn: int, room: int, digest: str) -> None:
        key = plan["_id"]
        # The message never names the other upload's MRN or room: the caller may not
        # be allowed to know who else was uploaded (e.g. a station of another room).
        if plan.get("mrn") != mrn:
            raise UploadConflict(f"upload_id {key!r} was already used for another patient; "
                                 "send a new upload_id")
        if plan.get("room") != room:
            raise UploadConflict(f"upload_id {key!r} was already used for another room; "
                                 "send a new upload_id")
        if plan.get("digest") != digest:
            raise UploadConflict(f"upload_id {key!r} was already used for an upload with "
                                 "other values; send a new upload_id")

    def _carry_out(self, plan: dict, name: str | None, metrics: dict | None,
                   image: tuple[bytes, str] | None, resumed: bool = False
                   ) -> tuple[bool, dict | None, dict]:
        """Write an upload's plan. Every step may be repeated (a retry after a crash):
        inserts use planned ids, updates are guarded by the upload's time stamp.
        ``resumed``: completing the plan of an earlier, interrupted attempt.
        Returns (created, the record or None, the patient document after the upload).

        The usual upload (a known patient with a name, staying in the room that shows
        them, nothing newer there) makes six round trips (:meth:`_upload_staying`):
        image, record, the room's guarded update with the rooms version's bump, the
        patient's guarded update (its document before, atomically), the other rooms
        showing them and the audit entry; ``POST /api/v1/patients`` adds the record
        count. Otherwise (a new patient or room, a move, no name, a newer or as new
        upload of the patient got in first, a resumed plan) the patient is updated before
        the room and read back after it: each value and summary under its own guard
        when a combined guard fails.
        """
        mrn, room, now, key = plan["mrn"], plan["room"], plan["at"], plan["_id"]
        values = {"room": room, "updated": {"at": now, "ms": ms(now)}}
        if name is not None:
            values["name"] = name
        record = summary = None
        if metrics is not None:
            record_id = plan["record_id"]
            image_doc = None if image is None else {
                "_id": record_id, "data": Binary(image[0]), "content_type": image[1],
                "size": len(image[0]), "etag": hashlib.sha256(image[0]).hexdigest()[:32]}
            record = {"_id": record_id, "mrn": mrn, "room": room, "received_at": now,
                      **metrics, "has_image": image is not None}
            summary = record_summary(record)  # summaries follow their record
            if name is not None and not resumed:
                staying = self._upload_staying(plan, name, values, record, summary,
                                               image_doc)
                if staying is not None:
                    return staying
            else:
                self._insert_record(record, image_doc)
        fields = {"_id": 0, "name": 1, "room": 1, "latest": 1, "created_by": 1}
        replaced = None if summary is None else self.patients.find_one_and_update(
            {"mrn": mrn, **not_newer("updated.at", now), **not_newer("latest.received_at", now)},
            {"$set": {**values, "latest": summary}}, projection=fields,
            return_document=ReturnDocument.BEFORE)
        if replaced is not None:  # it existed: created only by an earlier attempt of ours
            patient = replaced
        else:
            replaced = self._guarded_set(
                self.patients, {"mrn": mrn}, "updated.at", now, values, upsert=True,
                on_insert={"mrn": mrn, "name": name, "room": room, "created_at": now,
                           "updated": {"at": now, "ms": ms(now)}, "latest": None,
                           "created_by": key},
                projection=fields)
            patient = self.patients.find_one({"mrn": mrn}, {"name": 1, "created_by": 1}) or {}
            if summary is not None:
                self._guarded_set(self.patients, {"mrn": mrn}, "latest.received_at", now,
                                  {"latest": summary})
        created = patient.get("created_by") == key
        # What this upload really changed: the patient as it was just before our update
        # (a racing upload may have changed it since the plan was made). An attempt that
        # completes an interrupted plan finds its own values there: it audits against
        # the state the plan recorded before the first attempt.
        if created:
            before = None
        elif resumed or replaced is None:
            before = plan["before"] if resumed else None
        else:
            before = {"name": replaced.get("name"), "room": replaced.get("room"),
                      "latest": audit_record(replaced.get("latest"))}
        if name is None:  # the room shows the name the patient already has
            name = patient.get("name")
        occupant = {"mrn": mrn, "name": name, "since": now, "ms": ms(now)}
        room_before = None if summary is None else self.rooms.find_one_and_update(
            {"_id": room, **not_newer("patient.since", now),
             **not_newer("latest.received_at", now)},
            {"$set": {"room": room, "patient": occupant, "latest": summary}},
            projection={"patient": 1}, return_document=ReturnDocument.BEFORE)
        if room_before is None:
            room_before = self._guarded_set(self.rooms, {"_id": room}, "patient.since", now,
                                            {"room": room, "patient": occupant}, upsert=True,
                                            projection={"patient": 1})
            if summary is not None:
                self._guarded_set(self.rooms, {"_id": room}, "latest.received_at", now,
                                  {"latest": summary})
        previous = occupant_mrn(room_before)
        if previous not in (None, mrn):   # a new patient in the room: the previous
            self._cancel_pending(room, previous, now, plan["who"],  # one's commands end
                                 "a new patient was admitted to the room")
        # Read after our room's update (the race _vacate_other_rooms relies on), and the
        # answer's patient document too.
        current = self.patients.find_one({"mrn": mrn}, {"_id": 0}) or {"mrn": mrn}
        current = self._vacate_other_rooms(current, now, plan["who"])
        self._rooms_changed()
        self._audit_upload(plan, name, created, record, before)
        return created, record, current

    def _insert_record(self, record: dict, image_doc: dict | None) -> None:
        """The record and its image, each once; the image first: a record never points
        at a missing image."""
        if image_doc is not None:
            _insert_once(self.images, image_doc)
        _insert_once(self.records, record)

    def _upload_staying(self, plan: dict, name: str, values: dict, record: dict,
                        summary: dict, image_doc: dict | None
                        ) -> tuple[bool, dict, dict] | None:
        """The usual upload: the image, the record, the room's guarded update and the
        rooms version's bump in one round trip (in that order: a record never points at
        a missing image, a room never at a missing record), then the patient's guarded
        update: a known patient whose room already shows them, no upload of them as new
        stored. None when that is not the case (the image and record are stored):
        :meth:`_carry_out` goes on as for any upload (what was written here, the room's
        update or a version bump, is repeatable).

        The patient's update comes after the room's, so the document it returns (as it
        was just before, atomically) is the read after our room's update that
        :meth:`_vacate_other_rooms` needs: its guard is strict (older than ours), so
        when it matches, no upload of this patient as new as ours has updated them yet,
        and the patient's document now is that one with our values.
        """
        mrn, room, now = plan["mrn"], plan["room"], plan["at"]
        occupant = {"mrn": mrn, "name": name, "since": now, "ms": ms(now)}
        room_filter = {"_id": room, "patient.mrn": mrn, **not_newer("patient.since", now),
                       **not_newer("latest.received_at", now)}
        room_update = {"$set": {"room": room, "patient": occupant, "latest": summary}}
        # Last, a count of the other rooms showing them, after our room's update: an
        # update that changes nothing (it sets the MRN it matched on).
        others_filter = {"patient.mrn": mrn, "_id": {"$nin": [room, ROOMS_VERSION_ID]}}
        writes = [] if image_doc is None else [
            (self.images, functools.partial(InsertOne, image_doc))]
        writes.append((self.records, functools.partial(InsertOne, record)))
        room_at = len(writes)
        writes += [(self.rooms, functools.partial(UpdateOne, room_filter, room_update)),
                   (self.rooms, rooms_version_bump),
                   (self.rooms, functools.partial(UpdateMany, others_filter,
                                                  {"$set": {"patient.mrn": mrn}}))]
        written = client_bulk_write(self.db, writes)
        if written is not None:
            room_matched = written.update_results[room_at].matched_count
            shown_elsewhere = written.update_results[room_at + 2].matched_count
        else:  # one collection at a time; the version is bumped by the room's command
            self._insert_record(record, image_doc)
            rooms = self.rooms.bulk_write([UpdateOne(room_filter, room_update),
                                           rooms_version_bump()])
            room_matched = rooms.matched_count + rooms.upserted_count - 1  # the version's
            shown_elsewhere = None  # not counted: look
        if not room_matched:
            return None
        replaced = self.patients.find_one_and_update(
            {"mrn": mrn, **older("updated.at", now), **older("latest.received_at", now)},
            {"$set": {**values, "latest": summary}}, projection={"_id": 0},
            return_document=ReturnDocument.BEFORE)
        if replaced is None:
            return None
        current = {**replaced, **values, "latest": summary}
        # Nothing to free when no other room showed them after our room's update and
        # their document named this room before ours: a room another upload shows them
        # in later is freed by that upload, which reads the patient after its room's
        # update (_vacate_other_rooms), as is one whose upload updated the patient first
        # (then the document named that room).
        if shown_elsewhere != 0 or replaced.get("room") != room:
            current = self._vacate_other_rooms(current, now, plan["who"])
        # Not resumed: only an earlier attempt of this plan could have created them.
        self._audit_upload(plan, name, False, record, {
            "name": replaced.get("name"), "room": replaced.get("room"),
            "latest": audit_record(replaced.get("latest"))})
        return False, record, current

    def _vacate_other_rooms(self, patient: dict, now, who: dict) -> dict:
        """One patient occupies one room: the one their patient document names (the
        newest upload wins). ``patient`` is that document as read after this upload's
        room update; any other room still showing them is marked free; its occupant's
        ``since`` is kept, so a newer admission is never overwritten. Returns the
        document the decision was made on.

        Only rooms admitted no later than the document's stamp: a room admitted later
        was written by an upload newer than the read, which may have moved the patient
        there meanwhile (it frees the other rooms itself once it has updated the
        patient). A room admitted in that very millisecond may be such an upload's
        too (the guards let the last of equal stamps win): the patient is read once
        more, after the search, and that read decides.
        """
        mrn, freed_any = patient["mrn"], False
        for reread in (False, True):
            stamp_ms = (patient.get("updated") or {}).get("ms")
            admitted = {} if stamp_ms is None else {"patient.ms": {"$lte": stamp_ms}}
            others = list(self.rooms.find({"patient.mrn": mrn, "_id": {"$ne": patient.get("room")},
                                           **admitted}, {"patient": 1}))
            if reread or all(doc["patient"].get("ms") != stamp_ms for doc in others):
                break
            patient = self.patients.find_one({"mrn": mrn}, {"_id": 0}) or patient
        for doc in others:
            since, since_ms = doc["patient"].get("since"), doc["patient"].get("ms")
            # as found: its admission's integer twin (a date in a filter is compared to
            # the second by nx-27017, which would free a new admission of that second)
            as_found = {"patient.since": since} if since_ms is None else {"patient.ms": since_ms}
            freed = self.rooms.update_one(
                {"_id": doc["_id"], "patient.mrn": mrn, **as_found},
                {"$set": {"patient": {"mrn": None, "name": None, "since": since,
                                      "ms": ms(since), "left": {"mrn": mrn, "at": now}}}}
            ).modified_count
            if freed:
                freed_any = True
                self._cancel_pending(doc["_id"], mrn, now, who,
                                     f"the patient moved to room {patient.get('room')}")
        if freed_any:
            self._rooms_changed()
        return patient

    def _cancel_pending(self, room: int, mrn: int, now, who: dict, reason: str) -> None:
        """End the unapplied commands of a patient who left ``room`` (audited), so no
        command stays silently pending for a bed its patient has left."""
        for command in self.commands.find({"room": exactly(room), "mrn": exactly(mrn), "ack": None,
                                           "cancelled": None}, {"pressure_cmh2o": 1}):
            if self.commands.update_one(
                    {"_id": command["_id"], "ack": None, "cancelled": None},
                    {"$set": {"cancelled": {"at": now, "reason": reason}}}).modified_count:
                self._audit(who, "pressure_cancelled", room, mrn, now,
                            old={"pressure_cmh2o": command["pressure_cmh2o"],
                                 "command_id": str(command["_id"])},
                            new={"reason": reason})

    def _audit_upload(self, plan: dict, name, created: bool, record: dict | None,
                      before: dict | None) -> None:
        """An upload's audit entries (patient created or changed, room changed, record
        added), all in one round trip."""
        mrn, room, now, who = plan["mrn"], plan["room"], plan["at"], plan["who"]
        ids = plan["audit_ids"]
        entries = []
        if created:
            entries.append(audit_entry(who, "patient_created", room, mrn, now,
                                       new={"mrn": mrn, "name": name, "room": room},
                                       entry_id=ids["patient"]))
        elif before is not None:  # (None: our values lost to a newer upload's: no change)
            if name != before.get("name"):
                entries.append(audit_entry(who, "name_changed", room, mrn, now,
                                           old=before.get("name"), new=name,
                                           entry_id=ids["patient"]))
            if room != before.get("room"):
                for slot, where in (("room_from", before.get("room")), ("room_to", room)):
                    if where is not None:  # in both rooms' trails
                        entries.append(audit_entry(who, "room_changed", where, mrn, now,
                                                   old=before.get("room"), new=room,
                                                   entry_id=ids[slot]))
        if record is not None:
            entries.append(audit_entry(who, "record_added", room, mrn, now,
                                       old=before.get("latest") if before else None,
                                       new=audit_record(record), entry_id=ids["record"]))
        self._append_audit(entries)

    def get_patient(self, mrn: int) -> dict | None:
        """A patient with ``record_count`` counted from its records."""
        doc = self.patients.find_one({"mrn": mrn}, {"_id": 0})
        return self._with_record_counts([doc])[0] if doc else None

    def list_patients(self, page: int, per_page: int) -> tuple[list[dict], int]:
        cursor = (self.patients.find({}, {"_id": 0})
                  .sort([("room", pymongo.ASCENDING), ("mrn", pymongo.ASCENDING)])
                  .skip((page - 1) * per_page).limit(per_page))
        return self._with_record_counts(list(cursor)), self.patients.count_documents({})

    def _with_record_counts(self, patients: list[dict]) -> list[dict]:
        """Set each patient's ``record_count`` from the records (one query per page).

        Counted on read instead of a stored counter: a counter and the record it
        counts are two documents, and without transactions an interrupted upload
        could leave them apart. One ``$group`` on ``$mrn`` over the page's MRN range:
        nx-27017 runs an equality or range ``$match`` followed by this ``$group`` as one
        SQL query on the ``(mrn, received_at)`` index, but scans every record for
        ``$in``; other patients in the range are dropped here. (A ``$match`` after the
        ``$group`` makes it run the whole pipeline in Python; ``count_documents`` is
        ~50x slower.) One patient (an upload's answer, a patient's page): one ``count``
        command instead (:meth:`_record_count`), which stays flat as the history grows.
        """
        mrns = {p["mrn"] for p in patients}
        if not mrns:
            return patients
        if len(mrns) == 1 and on_a_server(self.db):
            (mrn,) = mrns
            counts = {mrn: self._record_count(mrn)}
        else:
            low, high = min(mrns), max(mrns)
            match = low if low == high else {"$gte": low, "$lte": high}
            counts = {doc["_id"]: doc["n"] for doc in self.records.aggregate([
                {"$match": {"mrn": match}}, {"$group": {"_id": "$mrn", "n": {"$sum": 1}}}])
                if doc["_id"] in mrns}
        for patient in patients:
            patient["record_count"] = int(counts.get(patient["mrn"], 0))
        return patients

    def _record_count(self, mrn: int) -> int:
        """One patient's records (an upload's answer, a patient's page), by the ``count``
        command on the ``mrn`` index: nx-27017 runs it as one SQL ``COUNT`` over the
        index, where an aggregation first counts the whole collection and then reads each
        of the patient's records (its database time 0.35 → 1.15 ms from 1 to 2,000
        records; the command 0.30 → 0.45 ms). mongomock has no ``command``: the caller
        aggregates there."""
        return int(self.db.command("count", self.records.name,
                                   query={"mrn": exactly(mrn)})["n"])

    def patient_records(self, mrn: int, limit: int) -> list[dict]:
        """A patient's ``limit`` newest records, newest first (no images)."""
        return list(self.records.find({"mrn": exactly(mrn)}, record_list_fields())
                    .sort(NEWEST_RECORDS).limit(limit))

    def night_records(self, mrn: int, hours: dt.timedelta, limit: int) -> list[dict]:
        """A patient's night: their records received within ``hours`` before their newest
        one (at most ``limit``, the newest), oldest first, with their details."""
        newest = self.records.find_one({"mrn": exactly(mrn)}, {"received_at": 1},
                                       sort=NEWEST_RECORDS)
        if newest is None:
            return []
        since = as_utc(newest["received_at"]) - hours
        return list(self.records.find({"mrn": exactly(mrn), "received_at": {"$gte": since}})
                    .sort(NEWEST_RECORDS).limit(limit))[::-1]

    def get_record(self, record_id: str) -> dict | None:
        """One record with its details (None: no such record, or not an id)."""
        oid = parse_object_id(record_id)
        return None if oid is None else self.records.find_one({"_id": oid})

    def record_lists(self, mrns: list[int], limit: int) -> dict[int, list[dict]]:
        """The ``limit`` newest records of each given patient, oldest first, by MRN.

        One small query per patient, each served by the ``(mrn, received_at)`` index
        (a few ms): cheaper than one ``$in`` query sorted over every record of every
        patient (35 s on nx-27017 at 194,000 records) or a ``$push``/``$slice``
        aggregation (run in Python there)."""
        fields = {"_id": 0, "mrn": 1, "received_at": 1, "cpap_pressure_cmh2o": 1,
                  "breath_rate_bpm": 1, "apnea_count": 1}
        return {mrn: list(self.records.find({"mrn": exactly(mrn)}, fields)
                          .sort(NEWEST_RECORDS).limit(limit))[::-1]
                for mrn in mrns}

    def get_image(self, record_id: str) -> Image | None:
        oid = parse_object_id(record_id)
        if oid is None:
            return None
        doc = self.images.find_one({"_id": oid})
        if doc is None:
            return None
        return Image(data=bytes(doc["data"]), content_type=doc["content_type"],
                     etag=doc["etag"])

    # -- rooms -------------------------------------------------------------------
    def _rooms_changed(self) -> None:
        """Bump the rooms version after a change (lets readers cache the wall)."""
        self.rooms.bulk_write([rooms_version_bump()])

    def rooms_version(self) -> int:
        """A number that changes whenever a room document changes (one tiny read)."""
        return int((self.rooms.find_one({"_id": ROOMS_VERSION_ID}) or {}).get("version", 0))

    def list_rooms(self) -> list[dict]:
        """Every room with what the wall shows (occupant, latest record, command), in
        numeric order (sorted here: nx-27017 orders integer ``_id`` values as text)."""
        return sorted((doc for doc in self.rooms.find({}, {"patient": 1, "latest": 1,
                                                           "command": 1, "applied": 1,
                                                           "live": 1})
                       if doc["_id"] != ROOMS_VERSION_ID), key=lambda doc: doc["_id"])

    def occupants(self) -> list[dict]:
        """Every room that has a patient (free rooms left out): ``{"_id", "patient"}``."""
        return sorted((doc for doc in self.rooms.find({}, {"patient": 1})
                       if occupant_mrn(doc) is not None), key=lambda doc: doc["_id"])

    def get_room(self, room: int) -> dict | None:
        return self.rooms.find_one({"_id": room})

    # -- pressure commands -------------------------------------------------------
    def add_command(self, room: int, mrn: int, pressure_cmh2o: int, source: str,
                    actor: dict | None = None) -> dict:
        """Store a command for patient ``mrn``, who must occupy ``room``.

        The command is bound to the room in one atomic update conditioned on the
        occupant, so it cannot reach a patient who arrived meanwhile; when the
        occupant changed it is removed again and :class:`OccupantChanged` raised (the
        caller answers 409: refused, never silently dropped). A command that was
        accepted and whose patient later leaves is cancelled by that upload (audited).
        """
        now = utc_now()
        previous = self.latest_command(room, mrn)
        command = {"_id": ObjectId(), "room": room, "mrn": mrn,
                   "pressure_cmh2o": pressure_cmh2o,
                   "commanded_at": now, "source": source, "ack": None, "cancelled": None}
        self.commands.insert_one(command)
        bound = self._guarded_set(self.rooms, {"_id": room, "patient.mrn": mrn},
                                  "command.commanded_at", now,
                                  {"command": command_summary(command)})
        if bound is None and occupant_mrn(self.get_room(room)) != mrn:
            self.commands.delete_one({"_id": command["_id"]})
            raise OccupantChanged(room, mrn)
        self._rooms_changed()
        self._audit(actor, "pressure_commanded", room, mrn, now,
                    old=previous["pressure_cmh2o"] if previous else None,
                    new={"pressure_cmh2o": pressure_cmh2o, "source": source,
                         "command_id": str(command["_id"])})
        return command

    def latest_command(self, room: int, mrn: int) -> dict | None:
        """The latest command for the room's patient ``mrn`` (a new occupant never
        receives the pressure commanded for the previous one; cancelled ones are gone)."""
        return self.commands.find_one({"room": exactly(room), "mrn": exactly(mrn),
                                       "cancelled": None},
                                      sort=NEWEST_COMMANDS)

    def command_history(self, room: int, limit: int) -> list[dict]:
        return list(self.commands.find({"room": exactly(room)}).sort(NEWEST_COMMANDS)
                    .limit(limit))

    def mark_applied(self, room: int, command_id: str, actor: dict | None = None
                     ) -> dict | None:
        """Mark a command applied (idempotent: the first time stamp is kept, and only
        the first acknowledgement goes into the audit trail). A cancelled command
        stays cancelled: the caller sees its ``cancelled`` field."""
        oid = parse_object_id(command_id)
        if oid is None:
            return None
        now = utc_now()
        changed = self.commands.update_one(
            {"_id": oid, "room": room, "ack": None, "cancelled": None},
            {"$set": {"ack": {"at": now}}}).modified_count
        command = self.commands.find_one({"_id": oid, "room": room})
        if command is not None and changed:
            self._audit(actor, "pressure_applied", room, command.get("mrn"), now,
                        old={"applied": False},
                        new={"applied": True, "pressure_cmh2o": command["pressure_cmh2o"],
                             "command_id": str(oid)})
        if command is not None:
            summary = command_summary(command)
            # the room's latest command is now applied: it is also the pressure in force
            applied = {"applied": summary} if command.get("ack") and not command.get(
                "cancelled") else {}
            self.rooms.update_one({"_id": room, "command.id": str(oid)},
                                  {"$set": {"command": summary, **applied}})
            self._rooms_changed()
        return command


    # -- live nights (issue #14) -------------------------------------------------
    def get_night(self, session_id: str) -> dict | None:
        return self.nights.find_one({"_id": session_id})

    def create_night(self, night: dict) -> dict:
        """Store a new night (a racing worker's first chunk may have stored it first:
        the stored one is returned either way)."""
        if _insert_once(self.nights, night):
            return night
        return self.get_night(night["_id"])

    def apply_chunk(self, session_id: str, sequence: int, changes: dict) -> bool:
        """Set a night's fields after its chunk ``sequence``, only if that chunk is still
        the next one (one atomic update: of two workers racing on one chunk, one wins)."""
        return self.nights.update_one({"_id": session_id, "next_seq": exactly(sequence)},
                                      {"$set": changes}).matched_count == 1

    def save_chunk(self, session_id: str, sequence: int, room: int, samples: str,
                   now: dt.datetime, check_first: bool = False) -> None:
        """Keep a chunk's raw samples (compressed). ``check_first``: a retry, which finds
        the chunk already there unless the first attempt stopped before storing it (a
        time-series collection has no unique ``_id`` to refuse a second copy)."""
        if check_first and self.chunks.find_one(
                {"session": session_id, "seq": exactly(sequence)}, {"_id": 1}):
            return
        _insert_once(self.chunks, {
            "_id": f"{session_id}:{sequence:09d}", "session": session_id, "seq": sequence,
            "room": room, "at": now,
            "data": Binary(zlib.compress(samples.encode("utf-8"), CHUNK_ZLIB_LEVEL))})

    def night_samples(self, session_id: str):
        """The raw samples of a night, chunk by chunk in order (text)."""
        for doc in self.chunks.find({"session": session_id}, {"data": 1, "seq": 1}
                                    ).sort("seq", pymongo.ASCENDING):
            yield zlib.decompress(bytes(doc["data"])).decode("utf-8")

    def set_room_live(self, room: int, mrn: int, summary: dict) -> None:
        """Put a night's summary on its room for the wall, unless the room has moved on:
        another patient, a later chunk of the same night, or a newer night."""
        summary = dict(summary, started_ms=ms(summary["started_at"]))
        key = {"_id": room, "patient.mrn": exactly(mrn)}
        for condition in (
                {"live.session_id": summary["session_id"],
                 "live.next_sequence": {"$lte": summary["next_sequence"]}},
                {"live.started_ms": {"$lt": summary["started_ms"]}},
                {"live": None}):
            if self.rooms.update_one(dict(key, **condition),
                                     {"$set": {"live": summary}}).matched_count:
                self._rooms_changed()
                return

    def room_night(self, room: int) -> dict | None:
        """The room's current night: the one on the room for its occupant."""
        doc = self.get_room(room) or {}
        live = doc.get("live") or {}
        if occupant_mrn(doc) is None or live.get("mrn") != occupant_mrn(doc):
            return None
        return self.get_night(live["session_id"])

    # -- people and their sign-in sessions ---------------------------------------
    def add_user(self, username: str, name: str, role: str, password: dict) -> bool:
        """Store a new person (``password``: the hash record); False if the name is taken."""
        now = utc_now()
        return _insert_once(self.users, {
            "_id": username, "name": name, "role": role, "password": password,
            "state": {"disabled": False, "at": now}, "created_at": now,
            "updated": {"at": now}})

    def get_user(self, username: str) -> dict | None:
        return self.users.find_one({"_id": username})

    def list_users(self) -> list[dict]:
        return list(self.users.find({}, {"password": 0}).sort("_id", pymongo.ASCENDING))

    def update_user(self, username: str, **values) -> bool:
        """Set a person's ``password`` (hash record), ``role`` or ``disabled`` state and
        end their sessions (a changed person signs in again); False when unknown."""
        now = utc_now()
        if "disabled" in values:
            values["state"] = {"disabled": values.pop("disabled"), "at": now}
        found = self.users.update_one({"_id": username},
                                      {"$set": {**values, "updated": {"at": now}}})
        if found.matched_count:
            self.sessions.update_many({"user": username, "revoked": None},
                                      {"$set": {"revoked": {"at": now}}})
        return bool(found.matched_count)

    def add_session(self, session_id: str, user: dict, expires_at: dt.datetime,
                    address: str | None) -> None:
        """Store a session (``session_id``: the token's SHA-256); drop expired ones."""
        now = utc_now()
        self.sessions.delete_many({"expires.at": {"$lte": now}})
        self.sessions.insert_one({
            "_id": session_id, "user": user["_id"], "name": user["name"],
            "role": user["role"], "created_at": now, "expires": {"at": expires_at},
            "address": address, "revoked": None})

    def get_session(self, session_id: str) -> dict | None:
        return self.sessions.find_one({"_id": session_id})

    def end_session(self, session_id: str) -> None:
        self.sessions.update_one({"_id": session_id, "revoked": None},
                                 {"$set": {"revoked": {"at": utc_now()}}})


class OccupantChanged(Exception):
    """A pressure command named a patient who no longer occupies the room."""

    def __init__(self, room: int, mrn: int):
        super().__init__(f"MRN {mrn} is not the patient in room {room} now (the room's "
                         "occupant changed since the command was prepared, or the MRN is "
                         "wrong). Nothing was sent; check the room and send the command "
                         "again.")
        self.room, self.mrn = room, mrn


def occupant_mrn(room_doc: dict | None) -> int | None:
    """The MRN of the patient occupying a room document (None: no room, or free)."""
    return ((room_doc or {}).get("patient") or {}).get("mrn")


def rooms_version_bump(namespace: str | None = None) -> UpdateOne:
    """The write that bumps the rooms version (a new one each time: drivers and mongomock
    may change what they are given); ``namespace`` for :func:`client_bulk_write`."""
    return UpdateOne({"_id": ROOMS_VERSION_ID}, {"$inc": {"version": 1}}, upsert=True,
                     namespace=namespace)


def record_list_fields() -> dict:
    """The projection of a record in lists and answers (a new dict: see RECORD_LIST_FIELDS)."""
    return dict(RECORD_LIST_FIELDS)


def record_summary(record: dict) -> dict:
    """The copy of a record kept in its room and patient documents (id as a string)."""
    summary = {k: v for k, v in record.items() if k != "_id" and k not in RECORD_DETAILS}
    summary["id"] = str(record["_id"])
    summary["ms"] = ms(record.get("received_at"))
    return summary


def audit_entry(actor: dict | None, action: str, room: int, mrn: int | None, now,
                old=None, new=None, entry_id: ObjectId | None = None) -> dict:
    """One audit entry: who (``actor``: name, role, address; a signed-in person's user
    name and the UI screen when known), when, where, what, old and new value."""
    actor = actor or ANONYMOUS
    who = {"name": actor.get("name") or "anonymous", "role": actor.get("role")}
    # (older entries and static tokens have neither user nor via)
    who.update({k: actor[k] for k in ("user", "via") if actor.get(k)})
    return {"_id": entry_id or ObjectId(), "room": room, "mrn": mrn, "at": now,
            "action": action, "who": who, "address": actor.get("address"), "old": old,
            "new": new}


def audit_record(record: dict | None) -> dict | None:
    """The values of a record the audit trail keeps (its id and measurements)."""
    if record is None:
        return None
    return {"id": str(record.get("_id", record.get("id"))),
            **{k: record.get(k) for k in ("cpap_pressure_cmh2o", "breath_rate_bpm",
                                          "apnea_count")}}


def command_summary(command: dict) -> dict:
    summary = {k: v for k, v in command.items() if k != "_id"}
    summary["id"] = str(command["_id"])
    summary["ms"] = ms(command.get("commanded_at"))
    return summary


def _client(app):
    client = app.config.get("MONGO_CLIENT")
    if client is None:
        timeout_ms = app.config.get("MONGO_TIMEOUT_MS", 3000)
        client = pymongo.MongoClient(app.config["MONGODB_URI"], tz_aware=True,
                                     serverSelectionTimeoutMS=timeout_ms,
                                     connectTimeoutMS=timeout_ms)
        app.config["MONGO_CLIENT"] = client
    return client


def _database(app):
    client = _client(app)
    try:
        return client.get_default_database()
    except pymongo.errors.ConfigurationError:  # URI without a database name
        return client[DEFAULT_DATABASE]


def init_app(app) -> None:
    """Connect and create the indexes; if the database is down, retry on first use.

    One :class:`Storage` per app, shared by its requests and threads: it holds no state
    of a request, and pymongo's collection objects are thread-safe (no need to build its
    twelve again for every request)."""
    app.extensions["storage_db"] = _database(app)
    app.extensions["storage"] = Storage(app.extensions["storage_db"])
    app.extensions["storage_indexed"] = False
    try:
        app.extensions["storage"].ensure_indexes()
        app.extensions["storage_indexed"] = True
    except DatabaseError as exc:
        log.warning("could not create indexes at start-up (will retry): %s", exc)


def get_storage() -> Storage:
    storage = current_app.extensions["storage"]
    if not current_app.extensions.get("storage_indexed"):
        try:
            storage.ensure_indexes()
            current_app.extensions["storage_indexed"] = True
        except DatabaseError:
            pass  # still down: the request's own query reports it (503)
    return storage
