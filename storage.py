"""Storage: the only module that talks to MongoDB (pymongo).

``get_storage()`` caches one :class:`Storage` per app context on ``flask.g``;
the pymongo client itself is created once per process (it is thread-safe and
pools connections). Tests inject a mongomock client via ``MONGO_CLIENT``.

Collections (see docs/README-api.md):

- ``patients``  one per MRN (unique), with a denormalised ``latest`` record summary.
- ``rooms``     one per room (``_id`` = room number): the latest occupant, the latest
  record summary and the latest pressure command, so the monitor wall is one query.
- ``records``   one document per CPAP upload (never updated: no growing arrays).
- ``images``    flow images (BSON binary), ``_id`` = the record's id; read only on request.
- ``commands``  pressure commands per room, kept as the audit trail.

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
import hashlib
import logging
from dataclasses import dataclass

import pymongo
from bson import Binary, ObjectId
from bson.errors import InvalidId
from flask import current_app, g
from pymongo.errors import DuplicateKeyError

DEFAULT_URI = "mongodb://127.0.0.1:27017/sleeplab"
DEFAULT_DATABASE = "sleeplab"

#: Any failure of the database (unreachable, timeout, ...); the API answers 503.
DatabaseError = pymongo.errors.PyMongoError

#: Record fields copied from an upload (besides mrn, room and times).
RECORD_METRICS = ("cpap_pressure_cmh2o", "breath_rate_bpm", "apnea_count",
                  "breaths", "duration_s", "ahi", "leakage_l")

#: Newest first; ``_id`` (an ObjectId, increasing) breaks ties within a millisecond.
NEWEST_RECORDS = [("received_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
NEWEST_COMMANDS = [("commanded_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]

#: How often an upsert that lost a race on the unique MRN index is retried.
UPSERT_RETRIES = 3

log = logging.getLogger(__name__)


def utc_now() -> dt.datetime:
    """Current UTC time, truncated to the millisecond BSON dates keep."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


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

    # -- set-up ------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            self.db.command("ping")
            return True
        except DatabaseError:
            return False

    def ensure_indexes(self) -> None:
        """Create the indexes (idempotent: safe on every start and in every worker)."""
        desc, asc = pymongo.DESCENDING, pymongo.ASCENDING
        self.patients.create_index([("mrn", asc)], unique=True, name="mrn_unique")
        self.patients.create_index([("room", asc), ("mrn", asc)], name="room_mrn")
        self.records.create_index([("room", asc), ("received_at", desc)], name="room_received")
        self.records.create_index([("mrn", asc), ("received_at", desc)], name="mrn_received")
        self.commands.create_index([("room", asc), ("commanded_at", desc)],
                                   name="room_commanded")

    # -- patients and uploads ----------------------------------------------------
    def _upsert_patient(self, mrn: int, room: int, name: str | None, now, add_record: bool):
        update = {
            "$set": {"room": room, "updated": {"at": now}},
            "$setOnInsert": {"mrn": mrn, "created_at": now, "latest": None},
            "$inc": {"record_count": 1 if add_record else 0},
        }
        if name is not None:
            update["$set"]["name"] = name
        else:
            update["$setOnInsert"]["name"] = None
        for attempt in range(UPSERT_RETRIES):
            try:
                result = self.patients.update_one({"mrn": mrn}, update, upsert=True)
                return result.upserted_id is not None
            except DuplicateKeyError:
                # Two first uploads of one MRN raced; the loser updates the winner's doc.
                if attempt == UPSERT_RETRIES - 1:
                    raise
        return False  # pragma: no cover

    def _guarded_set(self, collection, key: dict, stamp_field: str, now, values: dict,
                     upsert: bool = False) -> None:
        """``$set`` values unless the document already holds something newer.

        Each step is one atomic update; the filters never use ``$or`` (nx-27017 drops
        the other conditions of a filter that has one, and updates the wrong document).
        1. set where the stamp is not newer than ``now``; 2. otherwise set where there
        is no value yet (or insert the document when ``upsert``); 3. if a racing writer
        got in between, try step 1 once more. Whatever is left is newer than ours.
        """
        not_newer = dict(key, **{stamp_field: {"$lte": now}})
        if collection.update_one(not_newer, {"$set": values}).matched_count:
            return
        if upsert:
            try:
                if collection.update_one(key, {"$setOnInsert": values},
                                         upsert=True).upserted_id is not None:
                    return
            except DuplicateKeyError:
                pass  # another writer inserted it first
        else:
            empty = dict(key, **{stamp_field.split(".")[0]: None})
            if collection.update_one(empty, {"$set": values}).matched_count:
                return
        collection.update_one(not_newer, {"$set": values})

    def upload(self, mrn: int, room: int, name: str | None = None,
               metrics: dict | None = None, image: tuple[bytes, str] | None = None
               ) -> UploadResult:
        """Create or update a patient and, when ``metrics`` are given, add one record.

        ``image`` is ``(bytes, content_type)`` and only stored with a record.
        """
        now = utc_now()
        created = self._upsert_patient(mrn, room, name, now, add_record=metrics is not None)
        record = None
        if metrics is not None:
            record_id = ObjectId()
            if image is not None:
                data, content_type = image
                # The image goes in first: a record never points at a missing image.
                self.images.insert_one({
                    "_id": record_id, "data": Binary(data), "content_type": content_type,
                    "size": len(data), "etag": hashlib.sha256(data).hexdigest()[:32],
                })
            record = {"_id": record_id, "mrn": mrn, "room": room, "received_at": now,
                      **{k: metrics.get(k) for k in RECORD_METRICS},
                      "has_image": image is not None}
            self.records.insert_one(record)
        if name is None:  # the room shows the name the patient already has
            name = (self.patients.find_one({"mrn": mrn}, {"name": 1}) or {}).get("name")
        occupant = {"mrn": mrn, "name": name, "since": now}
        self._guarded_set(self.rooms, {"_id": room}, "patient.since", now,
                          {"room": room, "patient": occupant}, upsert=True)
        if record is not None:
            summary = record_summary(record)
            self._guarded_set(self.rooms, {"_id": room}, "latest.received_at", now,
                              {"latest": summary})
            self._guarded_set(self.patients, {"mrn": mrn}, "latest.received_at", now,
                              {"latest": summary})
        self._rooms_changed()
        patient = self.patients.find_one({"mrn": mrn}, {"_id": 0})
        return UploadResult(patient=patient, record=record, created=created)

    def get_patient(self, mrn: int) -> dict | None:
        return self.patients.find_one({"mrn": mrn}, {"_id": 0})

    def list_patients(self, page: int, per_page: int) -> tuple[list[dict], int]:
        cursor = (self.patients.find({}, {"_id": 0})
                  .sort([("room", pymongo.ASCENDING), ("mrn", pymongo.ASCENDING)])
                  .skip((page - 1) * per_page).limit(per_page))
        return list(cursor), self.patients.count_documents({})

    def patient_records(self, mrn: int, limit: int | None = None) -> list[dict]:
        """A patient's records, newest first (no images)."""
        cursor = self.records.find({"mrn": mrn}).sort(NEWEST_RECORDS)
        if limit:
            cursor = cursor.limit(limit)
        return list(cursor)

    def record_lists(self, mrns: list[int]) -> dict[int, list[dict]]:
        """Every record of the given patients, oldest first, grouped by MRN (one query)."""
        grouped: dict[int, list[dict]] = {mrn: [] for mrn in mrns}
        cursor = self.records.find(
            {"mrn": {"$in": mrns}},
            {"_id": 0, "mrn": 1, "received_at": 1, "cpap_pressure_cmh2o": 1,
             "breath_rate_bpm": 1, "apnea_count": 1},
        ).sort([("mrn", pymongo.ASCENDING), ("received_at", pymongo.ASCENDING),
                ("_id", pymongo.ASCENDING)])
        for doc in cursor:
            grouped.setdefault(doc["mrn"], []).append(doc)
        return grouped

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
        self.meta.update_one({"_id": "rooms"}, {"$inc": {"version": 1}}, upsert=True)

    def rooms_version(self) -> int:
        """A number that changes whenever a room document changes (one tiny read)."""
        return int((self.meta.find_one({"_id": "rooms"}) or {}).get("version", 0))

    def list_rooms(self) -> list[dict]:
        return list(self.rooms.find({}).sort("_id", pymongo.ASCENDING))

    def get_room(self, room: int) -> dict | None:
        return self.rooms.find_one({"_id": room})

    # -- pressure commands -------------------------------------------------------
    def add_command(self, room: int, mrn: int, pressure_cmh2o: int, source: str) -> dict:
        """Store a command for the room's current patient (``mrn``)."""
        now = utc_now()
        command = {"_id": ObjectId(), "room": room, "mrn": mrn,
                   "pressure_cmh2o": pressure_cmh2o,
                   "commanded_at": now, "source": source, "ack": None}
        self.commands.insert_one(command)
        self._guarded_set(self.rooms, {"_id": room}, "command.commanded_at", now,
                          {"command": command_summary(command)})
        self._rooms_changed()
        return command

    def latest_command(self, room: int, mrn: int) -> dict | None:
        """The latest command for the room's patient ``mrn`` (a new occupant never
        receives the pressure commanded for the previous one)."""
        return self.commands.find_one({"room": room, "mrn": mrn}, sort=NEWEST_COMMANDS)

    def command_history(self, room: int, limit: int) -> list[dict]:
        return list(self.commands.find({"room": room}).sort(NEWEST_COMMANDS).limit(limit))

    def mark_applied(self, room: int, command_id: str) -> dict | None:
        """Mark a command applied (idempotent: the first time stamp is kept)."""
        oid = parse_object_id(command_id)
        if oid is None:
            return None
        self.commands.update_one({"_id": oid, "room": room, "ack": None},
                                 {"$set": {"ack": {"at": utc_now()}}})
        command = self.commands.find_one({"_id": oid, "room": room})
        if command is not None:
            self.rooms.update_one({"_id": room, "command.id": str(oid)},
                                  {"$set": {"command": command_summary(command)}})
            self._rooms_changed()
        return command


def record_summary(record: dict) -> dict:
    """The copy of a record kept in its room and patient documents (id as a string)."""
    summary = {k: v for k, v in record.items() if k != "_id"}
    summary["id"] = str(record["_id"])
    return summary


def command_summary(command: dict) -> dict:
    summary = {k: v for k, v in command.items() if k != "_id"}
    summary["id"] = str(command["_id"])
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
    """Connect and create the indexes; if the database is down, retry on first use."""
    app.extensions["storage_db"] = _database(app)
    app.extensions["storage_indexed"] = False
    try:
        Storage(app.extensions["storage_db"]).ensure_indexes()
        app.extensions["storage_indexed"] = True
    except DatabaseError as exc:
        log.warning("could not create indexes at start-up (will retry): %s", exc)


def get_storage() -> Storage:
    if "storage" not in g:
        storage = Storage(current_app.extensions["storage_db"])
        if not current_app.extensions.get("storage_indexed"):
            try:
                storage.ensure_indexes()
                current_app.extensions["storage_indexed"] = True
            except DatabaseError:
                pass  # still down: the request's own query reports it (503)
        g.storage = storage
    return g.storage
