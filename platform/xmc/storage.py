"""Where runs, prepared datasets and bundles live: a local path or any filesystem URI that pyarrow resolves
(``file://``, ``s3://``, ``gs://``, ``hdfs://``).

A *location* is a string. A URI keeps its query string wherever it travels, so options such as an S3
endpoint (``s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http``) reach every process and node
that opens it; credentials come from each process's environment, as pyarrow reads them. A local path is
made absolute once (:func:`resolve`), relative to ``$XMC_WORKDIR`` or the current directory.

What must be memory-mapped or opened by libraries that take local paths (token caches, checkpoints,
faiss indexes) is materialised into a node-local cache (:func:`materialize`), once per node and key, safe
when several workers of a node ask at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from xmc.config import resolve_path

#: Files written last when a directory is uploaded: their presence says the rest is complete.
COMPLETION_MARKERS = ("manifest.json", "meta.json")


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def is_local(location: str | os.PathLike) -> bool:
    """A location this process can open as a path (a plain path or a ``file://`` URI)."""
    return not is_uri(location) or str(location).startswith("file://")


def resolve(location: str | os.PathLike) -> str:
    """``location`` as every process reads it: a URI unchanged, a local path absolute."""
    if is_uri(location):
        return str(location)
    return str(resolve_path(location))


def local_path(location: str | os.PathLike) -> Path:
    """The path of a local location (see :func:`is_local`)."""
    location = str(location)
    if location.startswith("file://"):
        return Path(location.removeprefix("file://").partition("?")[0])
    if is_uri(location):
        raise ValueError(f"{location} is not on this machine's file system")
    return Path(location)


def filesystem(location: str | os.PathLike):
    """``(pyarrow FileSystem, path within it)`` of a location."""
    import pyarrow.fs as pafs

    if is_local(location):
        return pafs.LocalFileSystem(), str(local_path(location))
    return pafs.FileSystem.from_uri(str(location))


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location/part/...``, keeping a URI's query string at the end."""
    base, mark, query = str(location).partition("?")
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)]) + mark + query


def parent(location: str | os.PathLike) -> str:
    """The location one level up, keeping a URI's query string."""
    base, mark, query = str(location).partition("?")
    return base.rstrip("/").rsplit("/", 1)[0] + mark + query


def name(location: str | os.PathLike) -> str:
    """The last component of a location (a run's or a bundle's name)."""
    return str(location).partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def exists(location: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(location: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dir(location: str | os.PathLike) -> list[str]:
    """Names of the entries directly in a directory (empty when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def read_bytes(location: str | os.PathLike) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path, compression=None) as stream:  # bytes as stored: no .gz guessing
        return stream.read()


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write a file whole: locally under a temporary name renamed into place; to an object store as one
    object (which readers see whole or not at all)."""
    if is_local(location):
        from xmc.io import atomic_path

        with atomic_path(local_path(location)) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path, compression=None) as stream:
        stream.write(data)


def write_text(location: str | os.PathLike, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def write_json(location: str | os.PathLike, obj) -> None:
    write_text(location, json.dumps(obj, indent=2) + "\n")


def read_json(location: str | os.PathLike):
    return json.loads(read_text(location))


def upload_file(local: str | os.PathLike, location: str | os.PathLike) -> None:
    write_bytes(location, Path(local).read_bytes())


def upload_dir(local: str | os.PathLike, location: str | os.PathLike,
               last: tuple[str, ...] = COMPLETION_MARKERS) -> None:
    """Copy a local directory to ``location``, the files named in ``last`` (a manifest) after all others,
    so a reader that finds them finds everything."""
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name in last):
        upload_file(path, join(location, path.relative_to(local).as_posix()))


def download_file(location: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy the file at ``location`` to the local path ``local``, under a temporary name renamed into place
    (a reader never sees half a file)."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
    tmp.write_bytes(read_bytes(location))
    os.replace(tmp, local)
    return local


def download_dir(location: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy the directory at ``location`` into the local directory ``local``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def remove_dir(location: str | os.PathLike) -> None:
    """Delete the directory at ``location`` and everything in it (nothing when it does not exist)."""
    if is_local(location):
        shutil.rmtree(local_path(location), ignore_errors=True)
        return
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != 0:  # pyarrow's FileType.NotFound
        fs.delete_dir(path)


def ray_storage(location: str | os.PathLike) -> dict:
    """Ray Train and Tune's ``RunConfig`` storage arguments for runs under ``location``: a local path, or a
    URI's path within its pyarrow file system (so options in the URI reach Ray too)."""
    if is_local(location):
        return {"storage_path": str(local_path(location))}
    filesystem_, path = filesystem(location)
    return {"storage_path": path, "storage_filesystem": filesystem_}


def cache_root() -> Path:
    """This node's cache of materialised remote files: ``$XMC_CACHE``, else ``~/.cache/xmc``."""
    return Path(os.environ.get("XMC_CACHE") or Path.home() / ".cache" / "xmc")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between the processes of one node (several workers starting at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def materialize(location: str | os.PathLike, key: str) -> Path:
    """A local directory holding the directory at ``location``: the directory itself when it is local,
    else a copy in this node's cache under ``key`` (made once, under a lock, and renamed into place so a
    killed copy is never taken for a complete one). ``key`` must change when the content does."""
    if is_local(location):
        return local_path(location)
    final = cache_root() / key
    if final.is_dir():
        return final
    with file_lock(final.parent / f".{final.name}.lock"):
        if not final.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
            try:
                download_dir(location, tmp)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final
