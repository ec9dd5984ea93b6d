"""Where everything lives under the data directory: the only module that spells a path.

::

    <data>/.jwt-secret                                   the generated HS256 secret
    <data>/.ticket-secret                                the stream tickets' HMAC key
    <data>/.instances/<instance>.lock                    one per running server (owners.py)
    <data>/.index/search.sqlite3[-wal|-shm]              the search index (index.py; derived)
    <data>/users/<user-dir>/dialogs/.lock                the user's flock, and the owner id
    <data>/users/<user-dir>/dialogs/current.yaml         the journal of the current dialog
    <data>/users/<user-dir>/dialogs/current.yaml.torn-<time>   bytes a crash tore, set aside
    <data>/users/<user-dir>/dialogs/current.yaml.damaged-<time>   a journal damaged beyond
                                                                   repair, moved aside
    <data>/users/<user-dir>/dialogs/archived/2026-11-21-10-30-00.yaml     (UTC time archived)
    <data>/users/<user-dir>/dialogs/archived/2026-11-21-10-30-00-2.yaml   (same second)
    <data>/users/<user-dir>/dialogs/archived/.tmp-<dialog>-<hex>          a redacted copy
                                                                          before its rename

``<user-dir>`` is the user id percent-encoded (:func:`user_dir_name`), so any id maps,
reversibly, to one safe path component. Every other module asks :class:`Layout` (or the
constants below) for a path; a test (tests/test_layout.py) fails if another module spells
one of these components.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

USERS = "users"
DIALOGS = "dialogs"
CURRENT = "current.yaml"
ARCHIVED = "archived"
LOCK = ".lock"
INSTANCES = ".instances"
SECRET_FILE = ".jwt-secret"
INDEX_DIR = ".index"
INDEX_FILE = "search.sqlite3"
TICKET_SECRET_FILE = ".ticket-secret"
TORN_PREFIX = CURRENT + ".torn-"
DAMAGED_PREFIX = CURRENT + ".damaged-"
TMP_PREFIX = ".tmp-"
MAX_USER_DIR = 240  # bytes; most filesystems allow 255 per path component
ARCHIVE_NAME = re.compile(r"\A(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})(?:-([1-9]\d{0,5}))?\.yaml\Z")
MAX_SAME_SECOND = 10_000  # archives of one user renamed into place in one second


class BadUserId(ValueError):
    """A user id that cannot be stored (too long once encoded, or empty)."""


def user_dir_name(user: str) -> str:
    """Map any user id, reversibly, to one safe path component.

    Percent-encoding leaves letters, digits and ``_.-~`` alone and encodes everything
    else, ``/`` and ``%`` included; a leading dot is encoded too, so ``.`` and ``..``
    (and hidden names) cannot occur.
    """
    if not user:
        raise BadUserId("the user id is empty")
    name = quote(user, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name.encode()) > MAX_USER_DIR:
        raise BadUserId(f"the user id is too long ({len(name)} bytes once encoded, max 240)")
    return name


def user_from_dir_name(name: str) -> str:
    return unquote(name)


def archive_sort_key(name: str) -> tuple[str, int]:
    match = ARCHIVE_NAME.match(name)
    if match is None:
        return ("", 0)
    return (match.group(1), int(match.group(2) or 1))


def archive_names_for(now: float | None = None) -> Iterator[str]:
    """Candidate archive names for a rename at ``now``: the second, then ``-2``, ``-3``..."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(now))
    yield f"{stamp}.yaml"
    for n in range(2, MAX_SAME_SECOND):
        yield f"{stamp}-{n}.yaml"


def torn_side_name(now: float | None = None) -> str:
    """The name a torn tail is set aside under (a ``-2``... suffix if it is taken)."""
    return TORN_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def damaged_side_name(now: float | None = None) -> str:
    """The name a journal damaged beyond repair is moved to (never deleted)."""
    return DAMAGED_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def tmp_copy_prefix(dialog: str) -> str:
    """The prefix of a redacted copy of ``dialog`` not yet renamed into place."""
    return f"{TMP_PREFIX}{dialog}-"


def file_kind(path: Path) -> str:
    """What a file under a user's directory is: archive, journal, torn side file, other."""
    if path.parent.name == ARCHIVED and ARCHIVE_NAME.match(path.name):
        return "archive"
    if path.name == CURRENT:
        return "journal"
    if path.name.startswith(TORN_PREFIX):
        return "torn side file"
    if path.name.startswith(DAMAGED_PREFIX):
        return "damaged journal"
    return "other file"


def instances_dir(data_dir: Path) -> Path:
    return Path(data_dir) / INSTANCES


def instance_lock(instances: Path, instance: str) -> Path:
    """The lock file a running instance holds, in ``instances_dir(data_dir)``."""
    return instances / f"{instance}{LOCK}"


def secret_path(data_dir: Path) -> Path:
    return Path(data_dir) / SECRET_FILE


def index_path(data_dir: Path, override: Path | None = None) -> Path:
    """The search index's database (``ARCHIVER_INDEX_PATH`` when set)."""
    return Path(override) if override is not None else Path(data_dir) / INDEX_DIR / INDEX_FILE


def ticket_secret_path(data_dir: Path) -> Path:
    """The HMAC key of stream tickets (tickets.py), shared by every instance of the directory."""
    return Path(data_dir) / TICKET_SECRET_FILE


class Layout:
    """The paths of one data directory's users, dialogs and archives."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.users_dir = self.data_dir / USERS
        self._users_str = str(self.users_dir)

    def user_dir(self, user: str) -> Path:
        return self.users_dir / user_dir_name(user)

    def dialogs_dir(self, user: str) -> Path:
        return self.user_dir(user) / DIALOGS

    def dialogs_str(self, user: str) -> str:
        # Plain strings on the append path: pathlib objects cost more than the syscalls.
        return os.path.join(self._users_str, user_dir_name(user), DIALOGS)

    def current_path(self, user: str) -> Path:
        return self.dialogs_dir(user) / CURRENT

    def archived_dir(self, user: str) -> Path:
        return self.dialogs_dir(user) / ARCHIVED

    def archived_dir_named(self, dir_name: str) -> str:
        """The ``archived/`` directory of the user directory ``dir_name`` (encoded), as
        text: the index walks directories by their encoded names."""
        return os.path.join(self._users_str, dir_name, DIALOGS, ARCHIVED)

    def archive_path(self, user: str, name: str) -> Path | None:
        """The path of archive ``name``, or None if ``name`` is not an archive name."""
        if ARCHIVE_NAME.match(name) is None:
            return None
        return self.archived_dir(user) / name

    def archive_names(self, user: str) -> list[str]:
        """The user's archive file names, newest first."""
        return archive_names_in(self.archived_dir(user))

    def users(self) -> list[str]:
        """Every user with a directory, decoded."""
        try:
            return sorted(user_from_dir_name(n) for n in os.listdir(self.users_dir))
        except FileNotFoundError:
            return []

    def has_user(self, user: str) -> bool:
        return self.user_dir(user).is_dir()

    def current_files(self) -> Iterator[tuple[str, str]]:
        """(user, path of current.yaml as text) for every user directory (files may be absent)."""
        try:
            entries = os.scandir(self.users_dir)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                yield user_from_dir_name(entry.name), os.path.join(entry.path, DIALOGS, CURRENT)

    def damaged_files(self) -> Iterator[tuple[str, Path]]:
        """(user, path) of every journal moved aside as damaged, user by user."""
        for user, current in self.current_files():
            directory = Path(current).parent
            for path in sorted(directory.glob(DAMAGED_PREFIX + "*")):
                yield user, path

    def archive_of(self, path: Path) -> str | None:
        """The user whose archive ``path`` is (a file under ``users_dir``), else None."""
        try:
            parts = path.relative_to(self.users_dir).parts
        except ValueError:
            return None
        if len(parts) == 4 and parts[1:3] == (DIALOGS, ARCHIVED) and ARCHIVE_NAME.match(parts[3]):
            return user_from_dir_name(parts[0])
        return None

    def archives_below(self, directory: Path) -> Iterator[Path]:
        """Archives under ``directory``, itself ``users_dir`` or a directory below it."""
        depth = len(directory.relative_to(self.users_dir).parts)
        pattern = "/".join(["*", DIALOGS, ARCHIVED, "*.yaml"][depth:])
        for path in directory.glob(pattern):
            if ARCHIVE_NAME.match(path.name):
                yield path


def archive_names_in(directory: Path | str) -> list[str]:
    """The archive file names in an ``archived/`` directory, newest first."""
    try:
        names = [n for n in os.listdir(directory) if ARCHIVE_NAME.match(n)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names, key=archive_sort_key, reverse=True)
