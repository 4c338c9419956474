"""The download helper against a local HTTP server: success, bad checksum, cut transfer, 404, refused,
timeout; atomic zip extraction; and ensure_files' download + extract path. No internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest

from mamo_lite.data import download as dl
from mamo_lite.data.errors import ChecksumError, DataError, DownloadError
from mamo_lite.data.registry import REGISTRY, DatasetSpec, FileSpec, Identity, Source, ensure_files

PAYLOAD = bytes(range(256)) * 64  # 16 KiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


TINY_MEMBERS = {"tiny/a.txt": b"alpha\n", "tiny/b.txt": b"beta\n", "tiny/README": b"read me\n"}
TINY_ZIP = _zip_bytes(TINY_MEMBERS)
EXTRA = b"extra file\n"
ROUTES = {"/ok.bin": PAYLOAD, "/tiny.zip": TINY_ZIP, "/extra.txt": EXTRA}


REQUESTS: list[str] = []  # paths the server was asked for


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        REQUESTS.append(self.path)
        try:
            if self.path in ROUTES:
                body = ROUTES[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/short.bin":  # promises more than it sends, then hangs up
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[:1000])
                self.wfile.flush()
                self.close_connection = True
            elif self.path == "/slow.bin":
                time.sleep(1.0)
                self.send_response(200)
                self.end_headers()
            else:
                self.send_error(404, "Not Found")
        except OSError:  # the client gave up (timeout test)
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMO_LITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MAMO_LITE_DATA", raising=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_success(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "ok.bin"
    out = dl.download(f"{server}/ok.bin", dest, sha256=PAYLOAD_SHA, nbytes=len(PAYLOAD),
                      md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["ok.bin"]  # no temp file left


def test_progress_bar_only_when_asked(server: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dl.download(f"{server}/ok.bin", tmp_path / "a.bin", sha256=PAYLOAD_SHA, progress=None)
    assert capsys.readouterr().err == ""  # captured stderr is not a TTY: no bar
    dl.download(f"{server}/ok.bin", tmp_path / "b.bin", sha256=PAYLOAD_SHA, progress=True)
    assert "b.bin" in capsys.readouterr().err


def test_checksum_mismatch_leaves_nothing(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "ok.bin"
    with pytest.raises(ChecksumError) as err:
        dl.download(f"{server}/ok.bin", dest, sha256="0" * 64, progress=False)
    msg = str(err.value)
    assert f"{server}/ok.bin" in msg and "0" * 64 in msg and PAYLOAD_SHA in msg and str(dest) in msg
    assert not dest.parent.exists()  # the folder created for the download is removed again


def test_size_mismatch_announced_by_server(server: str, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match="announces 16,384 bytes but 10 are expected"):
        dl.download(f"{server}/ok.bin", tmp_path / "x.bin", sha256=PAYLOAD_SHA, nbytes=10, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "short.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"previous good copy")  # an existing target survives a failed download
    with pytest.raises(DownloadError) as err:
        dl.download(f"{server}/short.bin", dest, sha256=PAYLOAD_SHA, nbytes=len(PAYLOAD), progress=False)
    msg = str(err.value)
    assert "closed early" in msg and f"{server}/short.bin" in msg and str(dest.parent) in msg
    assert PAYLOAD_SHA in msg
    assert dest.read_bytes() == b"previous good copy"
    assert [p.name for p in dest.parent.iterdir()] == ["short.bin"]


def test_http_404(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "gone.bin"
    with pytest.raises(DownloadError) as err:
        dl.download(f"{server}/gone.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    msg = str(err.value)
    assert "HTTP 404" in msg and f"{server}/gone.bin" in msg and str(dest) in msg and PAYLOAD_SHA in msg
    assert not dest.parent.exists()


def test_connection_refused(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/data.zip"
    dest = tmp_path / "dl" / "data.zip"
    with pytest.raises(DownloadError) as err:
        dl.download(url, dest, sha256=PAYLOAD_SHA, nbytes=123, progress=False, timeout=5)
    msg = str(err.value)
    assert url in msg and str(dest.parent) in msg and PAYLOAD_SHA in msg and "123 bytes" in msg
    assert not dest.parent.exists()


def test_timeout(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="timed out"):
        dl.download(f"{server}/slow.bin", tmp_path / "slow.bin", sha256=PAYLOAD_SHA, timeout=0.2,
                    progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- extraction


def test_extract_zip_strips_prefix(tmp_path: Path) -> None:
    archive = tmp_path / "tiny.zip"
    archive.write_bytes(TINY_ZIP)
    out = dl.extract_zip(archive, tmp_path / "out", ["tiny/a.txt", "tiny/b.txt"], strip_prefix="tiny/")
    assert out == {"tiny/a.txt": tmp_path / "out" / "a.txt", "tiny/b.txt": tmp_path / "out" / "b.txt"}
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"alpha\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "b.txt"]


@pytest.mark.parametrize("evil", ["../evil.txt", "sub/../../evil.txt", "/abs/evil.txt", "C:/evil.txt"])
def test_extract_zip_refuses_path_traversal(tmp_path: Path, evil: str) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"fine.txt": b"ok", evil: b"pwned"}))
    dest = tmp_path / "a" / "b"
    with pytest.raises(DataError, match="Refusing to extract"):
        dl.extract_zip(archive, dest)
    assert not (tmp_path / "a").exists()  # refused before anything was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]


def test_extract_zip_corrupt_member_leaves_nothing(tmp_path: Path) -> None:
    data = bytearray(_zip_bytes({"x.txt": b"A" * 1000}))  # stored, so the bytes appear verbatim
    data[data.index(b"A" * 1000) + 10] = ord("B")
    archive = tmp_path / "bad.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="corrupt"):
        dl.extract_zip(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_extract_zip_missing_member(tmp_path: Path) -> None:
    archive = tmp_path / "tiny.zip"
    archive.write_bytes(TINY_ZIP)
    with pytest.raises(DataError, match="lacks member"):
        dl.extract_zip(archive, tmp_path / "out", ["tiny/zzz.txt"])


# ---------------------------------------------------------------------- ensure_files downloads


def _tiny_spec(base: str) -> DatasetSpec:
    zip_source = Source("zip-extract", "tiny/tiny.zip", url=f"{base}/tiny.zip",
                        sha256=hashlib.sha256(TINY_ZIP).hexdigest(), nbytes=len(TINY_ZIP),
                        strip_prefix="tiny/", extras=("tiny/README",))
    file_source = Source("file", "tiny-extra/extra.txt", url=f"{base}/extra.txt",
                         sha256=hashlib.sha256(EXTRA).hexdigest(), nbytes=len(EXTRA))

    def ident(data: bytes) -> tuple[Identity, ...]:
        return (Identity("complete", len(data), sha256=hashlib.sha256(data).hexdigest()),)

    return DatasetSpec(
        name="tiny", title="Tiny", citation="nobody", terms="none", homepage="-",
        files=(
            FileSpec("a", "tiny/a.txt", ident(b"alpha\n"), "ascii", zip_source, member="tiny/a.txt"),
            FileSpec("b", "tiny/b.txt", ident(b"beta\n"), "ascii", zip_source, member="tiny/b.txt"),
            FileSpec("extra", "tiny-extra/extra.txt", ident(EXTRA), "ascii", file_source),
        ),
    )


def test_ensure_files_downloads_extracts_and_verifies(server: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "tiny", _tiny_spec(server))
    root = tmp_path / "data"
    REQUESTS.clear()
    raw = ensure_files("tiny", root, progress=False)
    assert raw.release == "complete"
    assert raw.paths == {"a": root / "tiny/a.txt", "b": root / "tiny/b.txt",
                         "extra": root / "tiny-extra/extra.txt"}
    assert (root / "tiny/README").read_bytes() == b"read me\n"  # extras extracted too
    assert sorted(REQUESTS) == ["/extra.txt", "/tiny.zip"]
    assert raw.provenance()["extra"] == {"path": str(root / "tiny-extra/extra.txt"),
                                         "sha256": hashlib.sha256(EXTRA).hexdigest(), "bytes": len(EXTRA)}

    # Second call: nothing downloaded. A deleted member is re-extracted from the kept zip, offline.
    ensure_files("tiny", root)
    (root / "tiny/b.txt").unlink()
    assert ensure_files("tiny", root, download=False).release == "complete"
    assert (root / "tiny/b.txt").read_bytes() == b"beta\n"
    assert len(REQUESTS) == 2


def test_ensure_files_unreachable_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setitem(REGISTRY, "tiny", _tiny_spec(base))
    with pytest.raises(DownloadError) as err:
        ensure_files("tiny", tmp_path, progress=False, timeout=5)
    msg = str(err.value)
    assert f"{base}/tiny.zip" in msg and str(tmp_path / "tiny") in msg
    assert hashlib.sha256(TINY_ZIP).hexdigest() in msg
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_ensure_files_rejects_a_bad_local_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "tiny", _tiny_spec("https://example.invalid"))
    archive = tmp_path / "tiny" / "tiny.zip"
    archive.parent.mkdir()
    archive.write_bytes(_zip_bytes({"tiny/a.txt": b"ALPHA\n", "tiny/b.txt": b"beta\n"}))
    (tmp_path / "tiny-extra").mkdir()
    (tmp_path / "tiny-extra" / "extra.txt").write_bytes(EXTRA)
    with pytest.raises(ChecksumError) as err:
        ensure_files("tiny", tmp_path, download=False)
    msg = str(err.value)
    assert str(archive) in msg and hashlib.sha256(TINY_ZIP).hexdigest() in msg and "Delete it" in msg
    assert not (tmp_path / "tiny" / "a.txt").exists()
    raw = ensure_files("tiny", tmp_path, download=False, verify=False)  # the user's choice
    assert raw.release == "unverified" and (tmp_path / "tiny" / "a.txt").read_bytes() == b"ALPHA\n"
