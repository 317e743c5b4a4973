"""The generation sliders' values as engine settings (shared by the chat and persona handlers)."""

from __future__ import annotations

SETTING_ORDER = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", "max_window_size")

# The sliders' ranges (ui.layout builds them from these). A value outside its slider's range makes
# Gradio refuse every event that sends it ("Value 6144 is greater than maximum value 2048"), so every
# value put into a slider (checkpoint defaults, persona settings) is clamped to these first.
SLIDER_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.01, 1.0),
    "top_k": (0, 200),
    "repetition_penalty": (1.0, 2.0),
    "max_new_tokens": (1, 8192),
}


def window_range(context_length: int) -> tuple[int, int, int]:
    """(minimum, maximum, step) of the max_window_size slider for a model of this context length.

    A checkpoint with a short context (under 256 tokens) gets a finer slider, not a crash; the
    maximum is the context (a remote server's ``max_model_len`` may be far below ``max_window_size``).
    """
    small = context_length <= 256
    return (1 if small else 256), max(2, context_length), (1 if small else 64)


def clamp_settings(values: dict, context_length: int) -> dict:
    """``values`` (by setting name) with each slider value inside its slider's range."""
    out = dict(values)
    bounds = dict(SLIDER_RANGES)
    low, high, _ = window_range(context_length)
    bounds["max_window_size"] = (low, high)
    for name, (lo, hi) in bounds.items():
        value = out.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = min(max(value, lo), hi)
    return out


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
