"""Reply versions, Continue and each reply's figures, kept as data in the conversation (no Gradio).

Regenerate and Edit no longer throw the last reply away: the reply they replace is kept as a
*version* of the new one, and the switcher (‹ 2/3 ›) shows any of them. In the store::

    reply = {"id", "role": "assistant", "content": <the shown version's text>,
             "versions": [{"content", "user", "info"}, ...], "version": <index shown>,
             "info": {"tokens", "ttft_s", "tokens_per_s", "finish"}}

``user`` is the text of the user message a version answers (an Edit changes it; switching to
that version puts it back, so the transcript always reads as the model saw it). A reply with a
single version has no ``versions`` key. Between Regenerate/Edit and the new reply the kept
versions wait in ``conv["next_versions"] = {"for": <user message id>, "versions": [...]}``; the
reply to that same user message takes them (any other reply ignores them).
"""

from __future__ import annotations

MAX_VERSIONS = 20  # versions kept per reply (the oldest go first)
CARRY_KEY = "next_versions"
CONTINUE_KEY = "continue_reply"  # conv[...] = id of the reply the next reply chain extends (Continue)


def last_reply(messages: list[dict]) -> tuple[int, dict] | None:
    """(index, message) of the chat's last reply: an assistant message after the last user message,
    with only persona events after it; None when there is none."""
    for i in range(len(messages) - 1, -1, -1):
        role = messages[i].get("role")
        if role == "event":
            continue
        if role == "assistant" and not messages[i].get("tool_calls"):
            return i, messages[i]
        return None
    return None


def user_before(messages: list[dict], index: int) -> dict | None:
    """The user message the reply at ``index`` answers (the nearest one before it)."""
    for i in range(index - 1, -1, -1):
        if messages[i].get("role") == "user":
            return messages[i]
    return None


def versions_of(reply: dict, user_text: str | None) -> list[dict]:
    """Every version of ``reply``, the shown one up to date with the reply's text."""
    versions = [dict(v) for v in reply.get("versions") or []]
    current = {"content": reply.get("content", ""), "user": user_text, "info": reply.get("info")}
    shown = reply.get("version")
    if versions and isinstance(shown, int) and 0 <= shown < len(versions):
        versions[shown] = {**versions[shown], **{k: v for k, v in current.items() if v is not None}}
    else:
        versions.append(current)
    return versions


def stash(conv: dict, reply: dict, user_text: str | None, for_id: str) -> None:
    """Keep ``reply``'s versions for the next reply to the user message ``for_id`` (Regenerate, Edit)."""
    if not reply.get("content") and not reply.get("versions"):
        return  # an empty (failed or stopped at once) reply is not worth a version
    conv[CARRY_KEY] = {"for": for_id, "versions": versions_of(reply, user_text)[-(MAX_VERSIONS - 1) :]}


def attach(conv: dict, reply: dict, user: dict | None) -> None:
    """Give the finished ``reply`` the versions waiting for its user message, and keep it in step."""
    carry = conv.pop(CARRY_KEY, None)
    user_text = user.get("content") if user else None
    if isinstance(carry, dict) and user is not None and carry.get("for") == user.get("id"):
        kept = [v for v in carry.get("versions") or [] if isinstance(v, dict) and isinstance(v.get("content"), str)]
        if kept:
            reply["versions"] = [*kept, {"content": reply["content"], "user": user_text, "info": reply.get("info")}]
            reply["version"] = len(reply["versions"]) - 1
            return
    sync(reply, user_text)


def sync(reply: dict, user_text: str | None = None) -> None:
    """After the shown version's text changed (Continue): write it into its version record."""
    versions, shown = reply.get("versions"), reply.get("version")
    if isinstance(versions, list) and isinstance(shown, int) and 0 <= shown < len(versions):
        versions[shown] = {**versions[shown], "content": reply["content"], "info": reply.get("info")}
        if user_text is not None:
            versions[shown]["user"] = user_text


def switch(conv: dict, step: int) -> bool:
    """Show the previous (``step`` -1) or next (+1) version of the last reply; False if there is none."""
    found = last_reply(conv["messages"])
    if found is None:
        return False
    index, reply = found
    versions = reply.get("versions")
    if not isinstance(versions, list) or len(versions) < 2:
        return False
    user = user_before(conv["messages"], index)
    sync(reply, user.get("content") if user else None)
    shown = reply.get("version") if isinstance(reply.get("version"), int) else len(versions) - 1
    target = min(max(shown + step, 0), len(versions) - 1)
    if target == shown:
        return False
    version = versions[target]
    reply["version"] = target
    reply["content"] = version.get("content", "")
    if version.get("info"):
        reply["info"] = version["info"]
    else:
        reply.pop("info", None)
    if user is not None and isinstance(version.get("user"), str):
        user["content"] = version["user"]
    return True


def position(messages: list[dict]) -> tuple[int, int] | None:
    """(shown, count), 1-based, of the last reply's versions; None with fewer than two."""
    found = last_reply(messages)
    if found is None:
        return None
    versions = found[1].get("versions")
    if not isinstance(versions, list) or len(versions) < 2:
        return None
    shown = found[1].get("version")
    shown = shown if isinstance(shown, int) and 0 <= shown < len(versions) else len(versions) - 1
    return shown + 1, len(versions)


def info_line(info: dict | None) -> str:
    """A reply's figures as one short line (tokens, speed, time to first token), or ""."""
    if not isinstance(info, dict) or not info.get("tokens"):
        return ""
    from .server_text import current_lang, reason, text  # in the page's language (ui.server_text)

    lang = current_lang()
    parts = [text(lang, "info_tokens", n=info["tokens"])]
    if info.get("tokens_per_s"):
        parts.append(text(lang, "stats_speed", tps=f"{info['tokens_per_s']:.1f}"))
    if info.get("ttft_s") is not None:
        parts.append(text(lang, "stats_ttft", ms=f"{info['ttft_s'] * 1000:.0f}"))
    if info.get("finish") and info["finish"] != "stop":
        parts.append(text(lang, "stats_end", reason=reason(lang, info["finish"])))
    return " · ".join(parts)
