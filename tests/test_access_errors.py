"""Access-file mistakes name the file, the line and the table or key where they can be
found (``FILE:LINE: [users.bob] keys ...``), and the file alone where they cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from hgwire_tw.access import AccessFileError, AccessPolicy

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
RULES = '[[rules]]\nrepos = "*"\nread = ["anonymous"]\n'


@pytest.mark.parametrize(
    "text, message",
    [
        ("# bob\n[users.bob]\nkeys = 3\n", ":3: [users.bob] keys must be a string or a list"),
        ('[users.bob]\n\npassword = "plain"\n', ":3: [users.bob] password must be a hash"),
        ("[users.bob]\nfoo = 1\n", ":2: [users.bob] unknown key(s): ['foo']"),
        ("[users]\nbob = 3\n", ":2: [users.bob] must be a table"),
        ('[users.bob]\nkeys = ["garbage"]\n', ":2: users.bob.keys[0]: not a public key line"),
        ('[users.bob]\nauthorized_keys = "nope"\n', ":2: users.bob: "),
        (RULES + '[[rules]]\nrepos = "x"\nread = ["bob"]\n', ":4: rules[1] names unknown user"),
        (RULES + "[[rules]]\nrepos = 3\n", ":5: rules[1].repos must be a string"),
        (RULES + '[[rules]]\nrepos = "x"\nwrite = 3\n', ":6: rules[1].write must be a string"),
        ('[[rules]]\nrepos = "x"\nwho = 1\n', ":3: rules[0] unknown key(s): ['who']"),
        ('\nmetrics = ["zed"]\n' + RULES, ":2: metrics names unknown user 'zed'"),
        # a table written inline has no line of its own to name: the file alone
        ("users = { bob = 3 }\n", ": [users.bob] must be a table"),
    ],
)
def test_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "access.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AccessFileError) as caught:
        AccessPolicy.load(path)
    assert str(caught.value).startswith(f"{path}{message}"), str(caught.value)


def test_a_valid_file_still_loads(tmp_path: Path) -> None:
    """Locating lines is only done for errors: a good file loads as before."""
    path = tmp_path / "access.toml"
    path.write_text(f'[users.bob]\nkeys = ["{KEY} bob@x"]\n' + RULES, encoding="utf-8")
    policy = AccessPolicy.load(path)
    assert [k.comment for k in policy.keys_for("bob")] == ["bob@x"]
    assert policy.authorize(None, "anything").read
