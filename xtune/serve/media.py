"""Images in requests: OpenAI ``image_url`` parts, read from a ``data:`` URL or a local file.

- ``data:image/png;base64,...`` (what OpenAI clients send for a local image): decoded here.
- A local path or ``file://`` URL: read from this machine. A server reachable from other machines
  (``--host`` not loopback) reads local files only under ``--allowed-local-media-path`` (vLLM's flag),
  so that a client cannot make it open files it chooses; a loopback server reads any path its user can.
- ``http(s)://`` URLs are refused with a 400: the server makes no outbound requests (no fetching of
  internal addresses on a client's behalf, no waiting on slow hosts inside a request). Clients send the
  image inline instead.

Every problem is an :class:`~xtune.serve.protocol.APIError` 400 naming the message it came from.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlparse

from xtune.chat.images import image_from_bytes, open_image
from xtune.errors import XtuneError
from xtune.serve.protocol import APIError

INLINE_HINT = "send the image inline as a data: URL (data:image/png;base64,...)"


class LocalMedia:
    """Which local files requests may name.

    Args:
        roots: Folders whose files may be read; None: any file (a loopback server); empty: none.
    """

    def __init__(self, roots: list[str | Path] | None) -> None:
        self.roots = None if roots is None else [Path(root).expanduser().resolve() for root in roots]

    def check(self, path: Path, param: str) -> Path:
        """``path`` resolved, if requests may read it.

        Raises:
            APIError: 400 when the file is outside every allowed folder.
        """
        resolved = path.expanduser().resolve()
        if self.roots is None or any(resolved.is_relative_to(root) for root in self.roots):
            return resolved
        if not self.roots:
            reason = "this server reads no local files (it listens beyond this machine)"
            fix = "start it with --allowed-local-media-path DIR"
        else:
            reason = f"local images are read only under {', '.join(map(str, self.roots))} (--allowed-local-media-path)"
            fix = "move the image there"
        raise APIError(400, f"{param}: {path}: {reason}; {INLINE_HINT}, or {fix}.", param=param)


def read_image(url: str, param: str, local: LocalMedia):
    """The image an ``image_url.url`` names, as an RGB PIL image.

    Raises:
        APIError: 400 for a bad data URL, a URL this server does not fetch, or a missing, forbidden or
            unreadable image.
    """
    if not url:
        raise APIError(400, f"{param}: image_url.url is empty; {INLINE_HINT}.", param=param)
    scheme = urlparse(url).scheme.lower()
    try:
        if scheme == "data":
            return _data_url(url, param)
        if scheme in ("http", "https"):
            raise APIError(
                400,
                f"{param}: this server does not fetch images from the web ({url[:80]}); {INLINE_HINT} "
                "or as a local file path.",
                param=param,
                code="image_url_not_supported",
            )
        if scheme == "file":
            path = Path(unquote(urlparse(url).path))
        elif scheme and len(scheme) > 1:  # one letter: a Windows drive, still a path
            raise APIError(400, f"{param}: unsupported image URL scheme '{scheme}:'; {INLINE_HINT}.", param=param)
        else:
            path = Path(url)
        return open_image(local.check(path, param))
    except XtuneError as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code="invalid_image") from None


def _data_url(url: str, param: str):
    header, comma, payload = url[len("data:") :].partition(",")
    media_type, *options = header.split(";")
    if not comma or "base64" not in options:
        raise APIError(400, f"{param}: a data URL must be data:image/...;base64,<data>; {INLINE_HINT}.", param=param)
    if media_type and not media_type.lower().startswith("image/"):
        raise APIError(400, f"{param}: the data URL holds '{media_type}', not an image.", param=param)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)  # line breaks are harmless
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"{param}: the data URL is not valid base64 ({exc}).", param=param) from None
    return image_from_bytes(data, f"the image in the data URL ({media_type or 'no media type'})")
