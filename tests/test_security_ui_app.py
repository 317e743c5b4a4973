"""Issue #12 against the real app (``python app.py`` subprocess, gradio_client logged in as each user).

One server: ``--auth ann,bob,admin --admins admin --rate-limit 2`` and a second ``--models``
variant to switch to.
"""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest
from server_process import AppProcess

USERS = {"ann": "ann-pw-1", "bob": "bob-pw-2", "admin": "admin-pw-3"}


@pytest.fixture(scope="module")
def team_app(ckpt_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("other") / "tiny-b"
    shutil.copytree(ckpt_dir, other)
    auth = ",".join(f"{u}:{p}" for u, p in USERS.items())
    args = ["--model", str(ckpt_dir), "--models", str(other), "--device", "cpu"]
    args += ["--data-dir", str(tmp_path_factory.mktemp("data")), "--auth", auth, "--admins", "admin"]
    proc = AppProcess([*args, "--rate-limit", "2"], env={"OMP_NUM_THREADS": "1"})
    yield proc
    proc.stop()


def _client(app, user: str):
    from gradio_client import Client

    return Client(app.url + "/", auth=(user, USERS[user]), verbose=False)


def _loaded_model(app) -> str:
    with urllib.request.urlopen(app.url + "/readyz", timeout=10) as r:
        return json.loads(r.read())["model"]


def test_a_non_admin_cannot_switch_the_model_for_everyone(team_app, ckpt_dir):
    before = _loaded_model(team_app)
    with pytest.raises(Exception, match="Only an admin"):
        _client(team_app, "ann").predict("tiny-b", api_name="/switch_model")
    assert _loaded_model(team_app) == before  # the model stays loaded


def test_chat_settings_with_an_unknown_key_get_a_clear_answer(team_app):
    with pytest.raises(Exception) as err:
        _client(team_app, "bob").predict("hi", [], None, {"cancel": 1}, api_name="/chat")
    text = str(err.value)
    assert "unknown generation setting(s): cancel; known settings: " in text and "max_new_tokens" in text
    assert "multiple values" not in text and "Traceback" not in text


def test_rate_limit_counts_per_login_not_per_session(team_app):
    """--rate-limit 2: fresh sessions (new Clients) of one login are still one user."""
    settings = {"temperature": 0, "max_new_tokens": 2}
    for _ in range(2):
        assert _client(team_app, "admin").predict("hi", [], None, settings, api_name="/chat") is not None
    with pytest.raises(Exception, match="(?i)rate|too many|per minute"):
        _client(team_app, "admin").predict("hi", [], None, settings, api_name="/chat")
    # ...while another login is not limited by it.
    assert _client(team_app, "ann").predict("hi", [], None, settings, api_name="/chat") is not None
