"""How time to first token and per-user tokens/s change with context length and with concurrent users,
measured through the running app's /v1/chat/completions stream (what a user's client sees).

    python bench/scaling.py                          # 1.8B shape: contexts 512..8192, users 1..16
    python bench/scaling.py --device cuda            # the same on a GPU
    python bench/scaling.py --small                  # minutes: tiny model, shorter sweeps

Writes bench/results/scaling_<shape>_<device>.{json,md} and the plots docs/scaling-context.png and
docs/scaling-users.png. Replies are sampled (temperature 1, top_p 1, fixed seeds) so a random-weight
model practically never stops early; each row reports the tokens actually generated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import textwrap
from pathlib import Path

from _clients import stream_v1
from _common import DOCS, all_at_once, checkpoint, write_results

FILLER = "The quick brown fox jumps over the lazy dog while the river runs to the sea. "


def message_of(tokenizer, tokens: int, salt: int) -> str:
    """A user message of about ``tokens`` tokens (ChatML adds ~20 more)."""
    ids = tokenizer.encode(f"[{salt}] " + FILLER * (tokens // 15 + 2))[: max(1, tokens - 20)]
    return tokenizer.decode(ids)


def one(url: str, text: str, new_tokens: int, seed: int) -> dict:
    """One streamed reply: prompt tokens, TTFT, per-user tok/s, end time."""
    trace = stream_v1(
        url, [{"role": "user", "content": text}], temperature=1.0, top_p=1.0, seed=seed, max_tokens=new_tokens
    )
    n = trace.completion_tokens or 0
    return {
        "ttft": trace.ttft_s,
        "tps": trace.tokens_per_s(n),
        "tokens": n,
        "end": trace.ended,
        "prompt": trace.prompt_tokens,
    }


def context_sweep(url: str, tokenizer, contexts: list[int], new_tokens: int) -> list[dict]:
    """One user at a time, growing prompts."""
    rows = []
    for i, length in enumerate(contexts):
        r = one(url, message_of(tokenizer, length, i), new_tokens, seed=i)
        rows.append(
            {
                "context tokens": length,
                "prompt tokens": r["prompt"],
                "TTFT s": round(r["ttft"], 3),
                "per-user tok/s": round(r["tps"] or 0, 2),
                "tokens": r["tokens"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def users_sweep(url: str, tokenizer, users: list[int], context: int, new_tokens: int) -> list[dict]:
    """n users sending at the same moment."""
    rows = []
    for n in users:
        texts = [message_of(tokenizer, context, 1000 * n + k) for k in range(n)]
        results, started = all_at_once([lambda k=k, t=t: one(url, t, new_tokens, seed=k) for k, t in enumerate(texts)])
        wall = max(r["end"] for r in results) - started
        ttfts = sorted(r["ttft"] for r in results)
        rows.append(
            {
                "users": n,
                "TTFT mean s": round(statistics.mean(ttfts), 3),
                "TTFT max s": round(ttfts[-1], 3),
                "per-user tok/s": round(statistics.mean(r["tps"] or 0 for r in results), 2),
                "aggregate tok/s": round(sum(r["tokens"] for r in results) / wall, 2),
                "tokens": sum(r["tokens"] for r in results),
            }
        )
        print(rows[-1], flush=True)
    return rows


def plot(ctx: list[dict], usr: list[dict], title: str, suffix: str) -> list[Path]:
    """Two PNGs in docs/ (Agg backend; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out = []
    for name, rows, x, xl in (
        ("context", ctx, "context tokens", "prompt length (tokens)"),
        ("users", usr, "users", "concurrent users"),
    ):
        if not rows:
            continue
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
        xs = [r[x] for r in rows]
        a.plot(xs, [r["TTFT s" if name == "context" else "TTFT mean s"] for r in rows], "o-", label="mean")
        if name == "users":
            a.plot(xs, [r["TTFT max s"] for r in rows], "s--", label="max")
            a.legend()
        a.set(xlabel=xl, ylabel="time to first token (s)", xscale="log", yscale="log")
        b.plot(xs, [r["per-user tok/s"] for r in rows], "o-", label="per user")
        if name == "users":
            b.plot(xs, [r["aggregate tok/s"] for r in rows], "s--", label="all users (tokens / wall time)")
            b.legend()
        b.set(xlabel=xl, ylabel="tokens/s", xscale="log")
        for axis in (a, b):
            axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            axis.set_xticks(xs, [str(v) for v in xs])
            axis.grid(alpha=0.3)
        fig.suptitle(textwrap.fill(title, 130, replace_whitespace=False), fontsize=9)
        fig.tight_layout()
        path = DOCS / f"scaling-{name}{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def main() -> None:
    """Start the app once (concurrency = most users), run both sweeps, write tables and plots."""
    from server_process import AppProcess

    from qwen_core.tokenizer import QwenTokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "1.8b", "7b"], help="model shape (1.8b; --small: tiny)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--contexts", default="512,1024,2048,4096,8192")
    ap.add_argument("--users", help="comma-separated (1,2,4,8,16; --small: 1,2,4,8)")
    ap.add_argument("--users-context", type=int, default=512, help="prompt tokens of each user in the users sweep")
    ap.add_argument("--new-tokens", type=int, help="tokens per reply (64; --small: 32)")
    ap.add_argument("--app-args", default="", help="more flags for app.py (e.g. a batching option)")
    ap.add_argument("--small", action="store_true", help="tiny model, contexts 512..8192, users 1..8, 32 tokens")
    ap.add_argument("--plot-suffix", default=None, help="docs/scaling-*<suffix>.png (default none; --small: -small)")
    ap.add_argument("--note", default="")
    ap.add_argument("--replot", metavar="RESULTS_JSON", help="only redraw the plots from a results file")
    args = ap.parse_args()
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
        note = data["machine"].get("note", "")
        title = data["notes"].split(". ")[0] + (f"\n{note}" if note else "")
        print(plot(data["rows"], data["sections"].get("Concurrent users", []), title, args.plot_suffix or ""))
        return
    for key, full, small in (("shape", "1.8b", "tiny"), ("users", "1,2,4,8,16", "1,2,4,8"), ("new_tokens", 64, 32)):
        if getattr(args, key) is None:  # explicit flags win over --small
            setattr(args, key, small if args.small else full)
    suffix = args.plot_suffix if args.plot_suffix is not None else ("-small" if args.small else "")
    contexts = [int(x) for x in args.contexts.split(",") if x]
    users = [int(x) for x in args.users.split(",") if x]
    ckpt = checkpoint(args.shape, "bfloat16")
    tokenizer = QwenTokenizer(ckpt / "qwen.tiktoken")
    with tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp:
        app_args = ["--model", str(ckpt), "--precision", args.precision, "--device", args.device]
        app_args += ["--concurrency", str(max(users or [1])), "--max-queue", "256", "--data-dir", tmp]
        app = AppProcess(app_args + args.app_args.split(), timeout=900)
        try:
            one(app.url, "hi", 4, 0)  # warm-up
            ctx = context_sweep(app.url, tokenizer, contexts, args.new_tokens)
            usr = users_sweep(app.url, tokenizer, users, args.users_context, args.new_tokens)
        finally:
            app.stop()
    title = f"Qwen-1 {args.shape} shape, {args.precision}, {args.device}, via /v1 (--concurrency {max(users or [1])})"
    plots = plot(ctx, usr, title + (f"\n{args.note}" if args.note else ""), suffix)
    notes = (
        f"{title}. Context sweep: one user, a prompt of the given length, {args.new_tokens} new tokens. Users sweep: "
        f"n users send at once, {args.users_context}-token prompts, {args.new_tokens} new tokens each; per-user "
        "tok/s = mean over users of (tokens-1)/(last-first token time); aggregate = all tokens / wall time. "
        "Plots: " + ", ".join(p.name for p in plots) + "."
    )
    name = f"scaling_{args.shape}_{args.device.split(':')[0]}" + ("_small" if args.small else "")
    sections = [("Concurrent users", usr, None)]
    print(write_results(name, ctx, list(ctx[0]) if ctx else [], notes, sections, note=args.note).read_text())


if __name__ == "__main__":
    main()
