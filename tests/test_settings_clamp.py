"""#15 item 6: against a server with a smaller context than ``max_window_size`` (vLLM ``--max-model-len
2048`` behind a checkpoint whose generation_config says 6144), the page's sliders must accept every value
the app puts into them — else Gradio refuses every event ("Value 6144 is greater than maximum value 2048")."""

from __future__ import annotations

from dataclasses import replace

import gradio as gr
from server_process import free_port

from qwen_core.manager import ModelManager, ModelSpec
from qwen_core.remote import RemoteEngine
from ui import UIConfig, build_app
from ui.handlers import Handlers
from ui.personas import Persona
from ui.settings_form import SETTING_ORDER


def _sliders(demo) -> list[gr.Slider]:
    """The generation sliders in page order (temperature … max_window_size; the seed is a Number)."""
    return [b for _, b in sorted(demo.blocks.items()) if isinstance(b, gr.Slider)]


def test_defaults_and_persona_values_fit_a_2048_token_remote_context(engine, ckpt_dir, tmp_path):
    assert engine.defaults.max_window_size == 6144  # as Qwen's generation_config.json says
    info = replace(engine.info, context_length=2048, precision="remote", device="remote", decode="remote")
    remote = RemoteEngine([f"http://127.0.0.1:{free_port()}"], engine.tokenizer, engine.defaults, info)
    try:
        manager = ModelManager(lambda *a, **k: remote, [])
        manager.start(ModelSpec(str(ckpt_dir), device="cpu"))
        demo, _ = build_app(manager, UIConfig(data_dir=tmp_path))
        sliders = dict(zip([k for k in SETTING_ORDER if k != "seed"], _sliders(demo), strict=True))
        assert sliders["max_window_size"].maximum == 2048
        handlers = Handlers(demo.service)
        loud = Persona(
            "p",
            "Loud",
            "Shout.",
            settings={"max_window_size": 9000, "temperature": 5.0, "top_k": 500, "max_new_tokens": 99999},
        )
        for values in (handlers.default_settings(), handlers.persona_settings(loud)):
            named = dict(zip(SETTING_ORDER, values, strict=True))
            for name, slider in sliders.items():
                slider.preprocess(named[name])  # what Gradio runs on every event input; raises when out of range
            assert named["max_window_size"] == 2048
        named = dict(zip(SETTING_ORDER, handlers.persona_settings(loud), strict=True))
        assert (named["temperature"], named["top_k"], named["max_new_tokens"]) == (2.0, 200, 8192)
    finally:
        remote.unload()
