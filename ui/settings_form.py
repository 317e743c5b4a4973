"""The generation sliders' values as engine settings (shared by the chat and persona handlers)."""

from __future__ import annotations

SETTING_ORDER = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", "max_window_size")


def settings_dict(values) -> dict:
    """Slider values → engine settings (temperature 0 = greedy, seed -1 = random)."""
    s = dict(zip(SETTING_ORDER, values, strict=True))
    temperature = float(s["temperature"])
    seed = None if s["seed"] is None or int(s["seed"]) < 0 else int(s["seed"])
    return {
        "do_sample": temperature > 0,
        "temperature": temperature,
        "top_p": float(s["top_p"]),
        "top_k": int(s["top_k"]),
        "repetition_penalty": float(s["repetition_penalty"]),
        "max_new_tokens": int(s["max_new_tokens"]),
        "seed": seed,
        "max_window_size": int(s["max_window_size"]),
    }
