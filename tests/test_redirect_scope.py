"""Redirects never send a client where it cannot read.

With ``--redirects`` and a private repository next to a public one, Mercurial 6.0.3's
v2 clones of the public repository follow redirects to blob URLs scoped to it (fetched
anonymously), and clones of the private repository are answered inline (a redirect
client fetches without credentials, so it could not read those blobs). A scope token
is good only for the blob and repository it was made for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from hgwire_tw.access import hash_password
from tests import repobuilders as rb
from tests.repobuilders import HG_603
from tests.servers import running_server
from tests.test_http_v1_integration import raw

V2 = ["--config", "experimental.httppeer.advertise-v2=true"]

pytestmark = pytest.mark.skipif(not os.path.exists(HG_603), reason="Mercurial 6.0.3 not installed")


def test_hg603_redirected_clones_of_public_and_private_repositories(
    rich_repo: Path, tmp_path: Path
) -> None:
    """Public: the 2nd clone follows scoped redirects; private (alice): never redirected;
    both equal hg's own clones. A scope of another repository or blob is refused."""
    private = rb.make_linear_repo(tmp_path / "private", commits=3)
    access = tmp_path / "access.toml"
    access.write_text(
        f'[users.alice]\npassword = "{hash_password("secret")}"\n'
        '[[rules]]\nrepos = "private"\nread = ["alice"]\n'
        '[[rules]]\nrepos = "*"\nread = ["anonymous", "*"]\n',
        encoding="utf-8",
    )
    refs = {}
    for name, src in (("pub", rich_repo), ("private", private)):
        rb.hg("clone", "-q", "-U", "--pull", src, tmp_path / f"ref-{name}")
        refs[name] = rb.repo_summary(tmp_path / f"ref-{name}")
    args = ("--repo", f"pub={rich_repo}", "--repo", f"private={private}", "--redirects")
    with running_server(tmp_path, *args, "--access", str(access)) as server:
        outputs = {}
        for name, url in (
            ("pub", server.url("pub")),
            ("private", server.url("private").replace("http://", "http://alice:secret@")),
        ):
            for i in range(2):
                dest = tmp_path / f"{name}{i}"
                out = rb.hg(*V2, "--debug", "clone", "-U", url, dest, exe=HG_603)
                outputs[name, i] = out.stdout.decode() + out.stderr.decode()
                assert rb.repo_summary(dest) == refs[name]
        log = server.log()
        scoped = re.findall(
            r'"GET (/\.hgwire/blobs/[0-9a-f]{64}\.cbor\?[^ "]+) HTTP/1\.1" 200', log
        )
        assert "following redirect to" in outputs["pub", 1] and scoped
        assert all("repo=pub&scope=" in url for url in scoped)
        assert not any("following redirect" in outputs["private", i] for i in range(2))
        assert "v2 cache hit" in log  # the private clone's hits went inline

        url = server.http_url + scoped[0]
        assert raw(url)[0] == 200
        assert raw(url.replace("repo=pub", "repo=private"))[0] == 401
        assert raw(re.sub(r"scope=[0-9a-f]", "scope=g", url))[0] == 401
        other = re.sub(r"/[0-9a-f]{64}\.cbor", "/" + "0" * 64 + ".cbor", url)
        assert raw(other)[0] in (401, 404)
