"""The Model tab's handlers (a mixin of :class:`ui.handlers.Handlers`): the loaded variant's status,
the live figures of the last reply, and the admin-only model switch."""

from __future__ import annotations

import gradio as gr

from qwen_core.errors import QwenCoreError

from .i18n import EN, ZH
from .refusal import Refusal, notify_info, notify_warning
from .server_text import current_lang, decode_mode, prefix_cache_line, reason
from .server_text import text as tr


class ModelHandlers:
    """Model-tab handlers; needs the host's ``service``, ``owner()``, ``access``, ``_require_admin()``
    and ``default_settings()``."""

    @staticmethod
    def stats_markdown(stats) -> str:
        """Live figures of the last reply."""
        lang = current_lang()
        parts = [tr(lang, "stats_tokens", n=stats.tokens)]
        if stats.ttft_s is not None:
            parts.append(tr(lang, "stats_ttft", ms=f"{stats.ttft_s * 1000:.0f}"))
        if stats.tokens_per_s:
            parts.append(tr(lang, "stats_speed", tps=f"{stats.tokens_per_s:.1f}"))
        if stats.finish_reason:
            parts.append(tr(lang, "stats_end", reason=reason(lang, stats.finish_reason)))
        if stats.seed is not None:
            parts.append(tr(lang, "stats_seed", seed=stats.seed))
        return " · ".join(parts)

    def model_status(self, request: gr.Request | None = None) -> str:
        """The loaded variant, precision, device map and memory; who may switch models."""
        s = self.service.manager.status()
        lang = current_lang()
        if not s.get("loaded"):
            return tr(lang, "model_loading", model=s.get("model") or "model")
        switch = ""
        if len(self.service.manager.specs) > 1 and not self.owner(request).is_admin:
            switch = f"  \n{tr(lang, 'switch_locked')} {self.access.admin_rule()}"
        mem = s["memory"]
        gpu = " · ".join(
            tr(lang, "gpu_mem", dev=k, used=v["allocated_gb"], free=v["free_gb"])
            for k, v in mem.items()
            if k != "rss_gb"
        )
        devices = ", ".join(sorted(set(s["device_map"].values())))
        line = tr(
            lang, "model_line", model=s["model"], precision=s["precision"], dtype=s["dtype"], params=s["params_b"]
        )
        device = tr(
            lang, "device_line", device=s["device"], devices=devices, attention=s["attention"],
            decode=decode_mode(lang, s.get("decode", "eager")), context=f"{s['context_length']:,}",
        )  # fmt: skip
        return (
            f"{line}  \n{device}  \n"
            f"{tr(lang, 'memory_line', rss=mem['rss_gb'])}{' · ' + gpu if gpu else ''}"
            f"{'  ' + chr(10) + prefix_cache_line(lang, s['prefix_cache']) if s.get('prefix_cache') else ''}{switch}"
        )

    def model_choices(self, request: gr.Request | None = None):
        """Configured variants for the switcher (disabled for those who may not switch)."""
        names = [spec.name for spec in self.service.manager.specs]
        current = self.service.manager.current
        admin = self.owner(request).is_admin
        return gr.update(choices=names, value=current.name if current else None, interactive=admin)

    def shared_button(self, request: gr.Request | None = None, label: str | None = None):
        """The shared-library and model-switch controls: enabled for admins only. With ``label`` (an
        :mod:`ui.i18n` key) its text in the page's language too: Gradio 6.31 may draw a button of a
        tab that mounts later in the language the page started in."""
        if label is None:
            return gr.update(interactive=self.owner(request).is_admin)
        text = (ZH if current_lang() == "zh" else EN)[label]
        return gr.update(interactive=self.owner(request).is_admin, value=text)

    def switch_model(self, name: str, request: gr.Request = None, progress=gr.Progress()):
        """Unload and load another configured variant, with progress; the old one returns on failure.

        It changes the model for every user, so only an admin may (see :meth:`ui.owner.Access.admin_rule`).
        """
        self._require_admin(request)
        spec = next((s for s in self.service.manager.specs if s.name == name), None)
        if spec is None:
            raise Refusal(f"{name} is not a configured model.")
        try:
            message = self.service.manager.switch(spec, progress=lambda f, m: progress(f, desc=m))
            notify_info(message)
        except QwenCoreError as exc:
            notify_warning(str(exc), duration=15)
        return self.model_status(request), self.model_choices(request), *self.default_settings()
