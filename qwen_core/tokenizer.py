"""Qwen-1's tiktoken tokenizer, read from the checkpoint's own ``qwen.tiktoken``.

Behaviour follows the original ``tokenization_qwen.py``: the same BPE ranks and
split pattern, NFC normalisation before encoding, and the same special-token ids.
One deliberate difference: :meth:`QwenTokenizer.encode` treats special-token
*text* as plain text (the original raised on it), so text typed by a user or
written in a persona can never produce a control token.
"""

from __future__ import annotations

import base64
import unicodedata
from functools import cached_property
from pathlib import Path

import tiktoken

from .errors import CheckpointError

VOCAB_FILE = "qwen.tiktoken"
# Qwen-1's pre-tokenizer: case-insensitive English contractions, letters with one
# leading non-letter, single digits, punctuation runs, newlines, spaces.
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
N_EXTRA = 205
N_RANKS = 151_643  # ranks in every published qwen.tiktoken
SPECIAL_START = N_RANKS
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END) + tuple(f"<|extra_{i}|>" for i in range(N_EXTRA))


def escape_special_text(text: str) -> str:
    """``text`` with every ``<|`` broken by a zero-width space (``<\u200b|``).

    For servers that tokenize text themselves (``transformers serve``, llama.cpp, a chat
    template): they read ``<|im_end|>`` typed by a user as the control token, which would
    let the user close a turn and forge another. Locally that text is always plain text;
    this is what keeps it plain over there. Text without ``<|`` is returned unchanged.
    """
    return text.replace("<|", "<\u200b|")


def load_ranks(path: Path) -> dict[bytes, int]:
    """Read a ``qwen.tiktoken`` file (``base64-token rank`` per line), checking its shape."""
    ranks: dict[bytes, int] = {}
    lineno = 0
    try:
        with open(path, "rb") as fh:
            for line in fh:
                lineno += 1  # reported on a bad line
                if not line.strip():
                    continue
                token, _, rank = line.partition(b" ")
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a valid Qwen vocabulary file (line {lineno}: {exc}). "
            "Copy qwen.tiktoken from the original checkpoint repository into the checkpoint folder."
        ) from exc
    if len(ranks) != N_RANKS or sorted(ranks.values()) != list(range(N_RANKS)):
        raise CheckpointError(
            f"{path} has {len(ranks)} tokens, but Qwen-1's vocabulary has {N_RANKS} ranks 0..{N_RANKS - 1}. "
            "It is the wrong file: copy qwen.tiktoken from the original Qwen checkpoint into the folder."
        )
    return ranks


class QwenTokenizer:
    """Encode and decode text exactly as Qwen-1 does; ids of special tokens match the checkpoints."""

    eod_id = SPECIAL_START  # <|endoftext|>
    im_start_id = SPECIAL_START + 1
    im_end_id = SPECIAL_START + 2

    def __init__(self, vocab_file: str | Path):
        self.vocab_file = Path(vocab_file)
        ranks = load_ranks(self.vocab_file)
        self.special_tokens = {tok: SPECIAL_START + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            "qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self._id_to_special = {i: tok for tok, i in self.special_tokens.items()}

    def __len__(self) -> int:
        """Number of ids a Qwen tokenizer can produce (151,851); the model's vocabulary is padded past it."""
        return self._enc.n_vocab

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end an assistant turn: ``<|im_end|>``, ``<|im_start|>``, ``<|endoftext|>``."""
        return (self.im_end_id, self.im_start_id, self.eod_id)

    def encode(self, text: str) -> list[int]:
        """Encode ``text`` after NFC normalisation; special-token text is encoded as ordinary text."""
        text = unicodedata.normalize("NFC", text)
        return self._enc.encode(text, allowed_special=set(), disallowed_special=())

    def encode_special(self, token: str) -> int:
        """The id of one special token, e.g. ``encode_special("<|im_end|>") == 151645``."""
        return self.special_tokens[token]

    def decode(self, ids, errors: str = "replace", skip_special_tokens: bool = False) -> str:
        """Decode ids to text; invalid UTF-8 is replaced, special tokens are shown as their text unless skipped."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i < SPECIAL_START]
        for i in ids:
            if i >= len(self):
                raise ValueError(f"token id {i} is outside Qwen's vocabulary (0..{len(self) - 1})")
        return self._enc.decode(ids, errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (special tokens give their text)."""
        return self._enc.decode_single_token_bytes(token_id)

    @cached_property
    def nl_ids(self) -> list[int]:
        """The ids of a lone ``"\\n"``, used between ChatML segments."""
        return self.encode("\n")

    def text_for_server(self, ids) -> str:
        """The text ``ids`` spell, for a server that tokenizes text itself: control tokens as their
        text, and special-token text inside the content escaped (see :func:`escape_special_text`), so
        the server's tokenizer finds control tokens exactly where the ids have them."""
        parts: list[str] = []
        run: list[int] = []
        for i in [*ids, None]:
            if i is None or self.is_special(i):
                if run:
                    parts.append(escape_special_text(self.decode(run)))
                    run = []
                if i is not None:
                    parts.append(self._id_to_special[i])
            else:
                run.append(i)
        return "".join(parts)

    def is_special(self, token_id: int) -> bool:
        """True for ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` and ``<|extra_N|>``."""
        return token_id in self._id_to_special
