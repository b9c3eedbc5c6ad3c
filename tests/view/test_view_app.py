"""The viewer's application shell: security headers, read-only, runs only as given."""

from __future__ import annotations

from pathlib import Path

import pytest

from simlab.errors import InputError
from simlab.view import make_app
from simlab.view.core import CSP


def test_every_response_has_the_strict_csp(view_server) -> None:
    status, headers, body = view_server.get("/")
    assert status == 200
    assert headers["Content-Security-Policy"] == CSP
    assert "'unsafe-inline'" not in CSP
    status, headers, _ = view_server.get("/no/such/page")
    assert status == 404 and headers["Content-Security-Policy"] == CSP


def test_no_endpoint_writes(view_server) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(view_server.url + "/", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405


def test_a_path_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a simlab run directory"):
        make_app([tmp_path])


def test_static_files_stay_in_their_folder(view_server) -> None:
    for path in ("/static/../core.py", "/static/%2e%2e/core.py", "/static/..%2fcore.py"):
        status, _, body = view_server.get(path)
        assert status in (403, 404), (path, status)
        assert "import" not in body
