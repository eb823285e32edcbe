#!/usr/bin/env python3
"""Fetch umqtt.simple for the virtual board.

On a real ESP32 `umqtt.simple` is frozen into the official MicroPython firmware. The virtual
board (boards/virtual/) needs it as a file: it comes from the `micropython-umqtt.simple`
package, an old-style source archive that pip can neither install nor download. So this
script does what pip would do, by hand:

1. find the package index pip is configured with: PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, else
   `pip config` (index-url, extra-index-url), else pip's own default index (the default its
   command line states for --index-url); no host name is written here,
2. read the project's page there (PEP 691 JSON or PEP 503 HTML),
3. download the 1.3.4 sdist, check its sha256 against the index's hash,
4. extract `umqtt/simple.py` to boards/virtual/vendor/umqtt/simple.py with a notice on top
   (micropython-lib, MIT licence).

Idempotent: does nothing when the file is there and carries the expected notice (--force
fetches again). Exit status 0 on success, 1 with one clear line on stderr otherwise.

    python scripts/fetch_umqtt.py            # fetch if missing
    python scripts/fetch_umqtt.py --force    # fetch again
"""
from __future__ import annotations

import argparse
import hashlib
import html.parser
import io
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

PROJECT = "micropython-umqtt.simple"
VERSION = "1.3.4"
MEMBER = "umqtt/simple.py"
ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "boards" / "virtual" / "vendor" / "umqtt" / "simple.py"
MARKER = f"# Vendored from {PROJECT} {VERSION}"

NOTICE = f"""{MARKER} (sdist on the package index; fetched by scripts/fetch_umqtt.py).
# Source: micropython-lib, https://github.com/micropython/micropython-lib (umqtt.simple).
# The MIT License (MIT). Copyright (c) 2013, 2014 micropython-lib contributors
# (micropython-lib's LICENSE; the package's metadata says License: MIT).
#   Permission is hereby granted, free of charge, to any person obtaining a copy of this
#   software and associated documentation files (the "Software"), to deal in the Software
#   without restriction, including without limitation the rights to use, copy, modify, merge,
#   publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
#   to whom the Software is furnished to do so, subject to the following conditions:
#   The above copyright notice and this permission notice shall be included in all copies or
#   substantial portions of the Software.
#   THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
#   INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR
#   PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE
#   FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
#   OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
#   DEALINGS IN THE SOFTWARE.
# Unmodified below this notice.
"""


class FetchError(Exception):
    pass


# ------------------------------------------------------------------ pip's configuration

def pip_config() -> dict[str, str]:
    """`pip config list` as {key: value} (keys like "global.index-url", ":env:.index-url");
    empty when pip cannot be run."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    cfg = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            value = " ".join(shlex.split(value))
        except ValueError:
            value = value.strip().strip("'\"")
        cfg[key.strip()] = value
    return cfg


def _lookup(cfg: dict[str, str], name: str) -> str | None:
    env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if env:
        return env
    for section in (":env:", "download", "install", "global"):
        if f"{section}.{name}" in cfg:
            return cfg[f"{section}.{name}"]
    return None


def default_index() -> str:
    """pip's own default index, as its command line states it: the "(default URL)" in the
    help of --index-url (pip's command line is its public interface). FetchError if pip
    cannot be run or states none."""
    try:
        # wide columns: the help text is not wrapped inside the URL
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--help"], capture_output=True,
                             text=True, timeout=60, check=False, env=dict(os.environ, COLUMNS="1000")).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise FetchError(f"cannot run pip to learn its default index: {e}") from e
    m = re.search(r"--index-url\b[^(]*\(default\s+(\S+?)\)", out)  # within its own help
    if m is None:
        raise FetchError("pip states no default index; set PIP_INDEX_URL")
    return m.group(1)


def index_urls(cfg: dict[str, str] | None = None) -> list[str]:
    """The indexes pip would search, in order: the main index, then the extra ones. `cfg`:
    pip's configuration as pip_config() gives it (read when None); PIP_* variables win."""
    cfg = pip_config() if cfg is None else cfg
    main = _lookup(cfg, "index-url") or default_index()
    extra = (_lookup(cfg, "extra-index-url") or "").split()
    urls = []
    for u in [main, *extra]:
        if u and u not in urls:
            urls.append(u)
    return urls


def _ssl_context(cfg: dict[str, str]) -> ssl.SSLContext:
    cert = _lookup(cfg, "cert")
    if cert and os.path.exists(cert):
        return ssl.create_default_context(cafile=cert)
    return ssl.create_default_context()


# ------------------------------------------------------------------ the index

class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (filename, href)
        self._href: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = ""

    def handle_data(self, data):
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._text.strip(), self._href))
            self._href = None


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _open(url: str, ctx: ssl.SSLContext, timeout: float, accept: str | None = None):
    if url.startswith("file:"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if path.is_dir():
            path = path / "index.html"
        return "text/html" if path.suffix == ".html" else "", path.read_bytes(), path.as_uri()
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
        return r.headers.get("Content-Type", ""), r.read(), r.geturl()


def find_sdist(index: str, ctx: ssl.SSLContext, timeout: float) -> tuple[str, str | None]:
    """(download URL, sha256 or None) of the wanted sdist on one index."""
    page = index.rstrip("/") + "/" + _normalise(PROJECT) + "/"
    ctype, body, final = _open(page, ctx, timeout,
                               "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
    wanted = f"{PROJECT}-{VERSION}.tar.gz"
    candidates: list[tuple[str, str | None]] = []
    if "json" in ctype:
        for f in json.loads(body).get("files", []):
            if f.get("filename") == wanted:
                candidates.append((urllib.parse.urljoin(final, f["url"]),
                                   (f.get("hashes") or {}).get("sha256")))
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        for text, href in parser.links:
            url = urllib.parse.urljoin(final, href)
            name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
            if name == wanted or text == wanted:
                frag = urllib.parse.urlparse(url).fragment
                sha = frag[len("sha256="):] if frag.startswith("sha256=") else None
                candidates.append((url.split("#", 1)[0], sha))
    if not candidates:
        raise FetchError(f"{wanted} is not listed on the index page {page}")
    return candidates[0]


def fetch(force: bool = False, timeout: float = 60.0, log=print, dest: Path = DEST,
          cfg: dict[str, str] | None = None) -> Path:
    """Make sure `dest` (by default DEST) exists; returns its path. `cfg`: pip's configuration
    as pip_config() gives it (read when None). Raises FetchError with a clear message."""
    if not force and dest.exists() and dest.read_text(errors="replace").startswith(MARKER):
        return dest
    cfg = pip_config() if cfg is None else cfg
    ctx = _ssl_context(cfg)
    errors = []
    for index in index_urls(cfg):
        try:
            url, sha = find_sdist(index, ctx, timeout)
        except (OSError, urllib.error.URLError, ValueError, FetchError) as e:
            errors.append(f"{index}: {e}")
            continue
        log(f"fetch_umqtt: downloading {url.rsplit('/', 1)[-1]} from {index}")
        try:
            _, data, _ = _open(url, ctx, timeout)
        except (OSError, urllib.error.URLError) as e:
            errors.append(f"{url}: {e}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if sha is None:
            raise FetchError(f"the index gives no sha256 for {url}; refusing an unverified archive")
        if digest != sha.lower():
            raise FetchError(f"sha256 mismatch for {url}: index says {sha}, got {digest}")
        source = _extract(data)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(NOTICE + source)
        tmp.replace(dest)
        log(f"fetch_umqtt: wrote {_show(dest)} (sha256 of the archive verified)")
        return dest
    raise FetchError(f"could not get {PROJECT} {VERSION} from any configured index: "
                     + "; ".join(errors))


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _extract(data: bytes) -> str:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.split("/", 1)[-1] == MEMBER:
                    return tar.extractfile(m).read().decode("utf-8")
    except (tarfile.TarError, OSError, UnicodeDecodeError) as e:
        raise FetchError(f"cannot read the archive: {e}") from e
    raise FetchError(f"the archive has no {MEMBER}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="fetch even if the file is there")
    ap.add_argument("--timeout", type=float, default=60.0, help="network timeout, seconds")
    args = ap.parse_args(argv)
    messages = []
    try:
        path = fetch(force=args.force, timeout=args.timeout, log=messages.append)
    except FetchError as e:
        print(f"fetch_umqtt: {e}", file=sys.stderr)
        return 1
    print("\n".join(messages) if messages else f"fetch_umqtt: {_show(path)} is present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
