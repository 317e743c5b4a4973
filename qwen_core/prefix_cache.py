"""KV reuse across turns: a byte-bounded, LRU radix tree of token ids → their K/V.

A chat re-sends its whole history every turn. The decode worker stores the K/V of
every prompt it prefilled and of every reply that ended (prompt + reply ids, the
reply's last token excluded: it was never fed), keyed by token ids. A new prompt
looks up its longest cached prefix and only the rest is prefilled.

Storage: a radix tree (one per dynamic-NTK alpha) whose nodes hold a run of token ids
and their K/V as one tensor ``[layers, 2, heads, run, head_dim]``; shared prefixes (a
persona, the earlier turns of a chat) are stored once. Inserting copies only the tokens
the tree does not hold yet, and splits a node only where two sequences part; the two
halves of a split stay views of the node's buffer (no copy while a reply waits), and
the survivors are copied out only when eviction drops a view of a shared buffer, so
the bytes counted are the bytes held.

Exactness: Qwen-1 rotates keys with an NTK alpha fixed by the whole prompt's length
(:func:`qwen_core.modeling.ntk_alpha`), so K/V computed under one alpha are only right
for prompts that get the same alpha. The trees are keyed by alpha: a prompt looks
only in its own alpha's tree (inside the trained context that is always alpha 1;
beyond it, a turn whose prompt crossed into a new alpha finds nothing and is
recomputed, as the original would). LogN scales queries only, never the cached K/V.

Read-only sharing: the tree never writes into a node's tensor (a split makes views, an
eviction drops references, a compaction replaces a node's tensor by a copy), so
:meth:`PrefixCache.match` hands out views without copying, and the one copy a reply
needs is made where its cache is built (the first forward's concatenation, or the
static cache's fill). Eviction: least recently used leaves first, until the tree fits
``capacity_bytes``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Sequence

import torch

DEFAULT_CPU_MB = 4096  # capped by a quarter of the RAM free at load (1.8B fp32: ~10,000 tokens)
GPU_FRACTION = 0.2  # of the GPU memory free once the weights are loaded
# A cached prefix is used only when it is at least this share of the prompt. Prefilling on top of
# cached K/V needs an explicit attention mask (the new queries are not square with the keys), and
# SDPA with a mask is 2-3.5x slower than its causal kernel (CPU, 4,075 queries x 4,095 keys: 129-207
# vs 60 ms). A short shared head (the ChatML system turn, ~20 tokens) before a long new message saved
# 0.5 % of the work and cost 3.9x the TTFT of a 4,096-token prompt on the tiny model
# (bench/side_by_side.py). Follow-up turns, regenerate and edits reuse far more than this.
MIN_REUSE_SHARE = 0.25


class _Node:
    """A run of token ids (the edge from its parent) and their K/V."""

    __slots__ = ("children", "kv", "parent", "sharing", "tokens", "used")

    def __init__(self, tokens: tuple[int, ...], kv: torch.Tensor | None, parent: _Node | None, used: int):
        self.tokens = tokens
        self.kv = kv  # [layers, 2, heads, len(tokens), head_dim]; None for a root
        self.children: dict[int, _Node] = {}
        self.parent = parent
        self.used = used  # LRU stamp
        self.sharing: set[_Node] = {self}  # the nodes whose ``kv`` are views of one buffer (splits)

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """Token-id prefixes → K/V, per NTK alpha, bounded to ``capacity_bytes`` (0: off). Thread-safe."""

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError("the prefix cache capacity must be 0 (off) or more bytes")
        self.capacity_bytes = int(capacity_bytes)
        self._roots: dict[float, _Node] = {}
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        self.bytes = 0
        self.entries = 0
        self.hits = self.misses = self.tokens_reused = self.tokens_prefilled = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    # --- lookup ---------------------------------------------------------------
    def match(self, ids: Sequence[int], alpha: float, limit: int) -> tuple[int, list[torch.Tensor]]:
        """The longest cached prefix of ``ids[:limit]`` computed under ``alpha``, when it is at
        least :data:`MIN_REUSE_SHARE` of ``ids`` (a miss otherwise).

        Returns (its length, its K/V as consecutive pieces ``[layers, 2, heads, run, head_dim]``
        whose runs add up to that length); (0, []) on a miss. The pieces are views of the
        tree's tensors, not copies: read them (:func:`layer_pieces`), never write into them.
        Counts the lookup in :meth:`stats`: the caller prefills ``len(ids) - length`` tokens.
        """
        with self._lock:
            pieces: list[torch.Tensor] = []
            pos = 0
            node = self._roots.get(float(alpha)) if self.enabled else None
            stamp = next(self._clock)
            while node is not None and pos < limit:
                child = node.children.get(ids[pos])
                if child is None:
                    break
                take = _common(child.tokens, ids[pos:limit])
                child.used = stamp
                pieces.append(child.kv[:, :, :, :take] if take < len(child.tokens) else child.kv)
                pos += take
                if take < len(child.tokens):
                    break
                node = child
            for parent in self._ancestors(node) if pieces else ():
                parent.used = stamp  # a used run keeps its prefix alive
            if pos < MIN_REUSE_SHARE * len(ids):
                pos = 0  # prefilling from scratch is cheaper (see MIN_REUSE_SHARE)
            self.hits += bool(pos)
            self.misses += not pos
            self.tokens_reused += pos
            self.tokens_prefilled += len(ids) - pos
            if not pos:
                return 0, []
        return pos, pieces

    # --- storing --------------------------------------------------------------
    def insert(self, ids: Sequence[int], alpha: float, kv_of: Callable[[int, int], torch.Tensor]) -> None:
        """Store the K/V of ``ids`` computed under ``alpha``.

        ``kv_of(start, end)`` gives a fresh tensor ``[layers, 2, heads, end - start, head_dim]``
        (the tree keeps it) for those tokens; it is called only for the tokens the tree does
        not hold yet. What does not fit in the whole capacity is not stored. Room is made
        first (least recently used leaves go), so the bound holds at every moment.
        """
        if not self.enabled or not ids:
            return
        ids = tuple(int(t) for t in ids)
        with self._lock:
            stamp = next(self._clock)
            root = self._roots.setdefault(float(alpha), _Node((), None, None, stamp))
            node, pos = root, 0
            path = [root]
            while pos < len(ids):
                node.used = stamp
                child = node.children.get(ids[pos])
                if child is None:
                    break
                take = _common(child.tokens, ids[pos:])
                if take < len(child.tokens):
                    if pos + take == len(ids):  # ends inside this run (a regenerate): all held already
                        child.used = stamp
                        for parent in path:
                            parent.used = stamp
                        return
                    child = self._split(child, take)
                child.used = stamp
                node, pos = child, pos + take
                path.append(node)
            if pos == len(ids):
                return
            probe = kv_of(pos, pos + 1)  # one token's size, before copying them all
            size = probe.numel() * probe.element_size() * (len(ids) - pos)
            if size > self.capacity_bytes or not self._make_room(size, protect={id(n) for n in path}):
                return
            kv = kv_of(pos, len(ids))
            node.children[ids[pos]] = _Node(ids[pos:], kv, node, stamp)
            self.bytes += kv.numel() * kv.element_size()
            self.entries += 1

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut ``node`` after ``at`` tokens; returns the new upper half (its parent's child now).

        Both halves are views of ``node``'s buffer: nothing is copied while a reply waits for
        its first token. They share it (``sharing``) until eviction drops one (:meth:`_drop`)."""
        upper = _Node(node.tokens[:at], node.kv[:, :, :, :at], node.parent, node.used)
        node.parent.children[node.tokens[0]] = upper
        node.tokens, node.kv, node.parent = node.tokens[at:], node.kv[:, :, :, at:], upper
        upper.children[node.tokens[0]] = node
        upper.sharing = node.sharing
        upper.sharing.add(upper)
        self.entries += 1
        return upper

    def _drop(self, victim: _Node) -> None:
        """Remove the leaf ``victim``. Nodes still viewing its buffer get their own copy, so the
        buffer is really freed and :attr:`bytes` stays what the tree holds."""
        del victim.parent.children[victim.tokens[0]]
        self.bytes -= victim.nbytes
        self.entries -= 1
        victim.sharing.discard(victim)
        for survivor in victim.sharing:
            survivor.kv = survivor.kv.clone()  # a new tensor, never a write into the shared one
            survivor.sharing = {survivor}
        victim.sharing = {victim}

    def _make_room(self, size: int, protect: set[int]) -> bool:
        """Drop least recently used leaves (never a node in ``protect``) until ``size`` more bytes fit."""
        if self.bytes + size <= self.capacity_bytes:
            return True
        heap = [(n.used, id(n), n) for n in self._nodes() if not n.children and n.parent is not None]
        heapq.heapify(heap)
        while self.bytes + size > self.capacity_bytes and heap:
            _, _, victim = heapq.heappop(heap)
            if id(victim) in protect:
                continue
            parent = victim.parent
            self._drop(victim)
            if not parent.children and parent.parent is not None:  # the parent is a leaf now
                heapq.heappush(heap, (parent.used, id(parent), parent))
        return self.bytes + size <= self.capacity_bytes

    def _nodes(self):
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    @staticmethod
    def _ancestors(node: _Node | None):
        while node is not None:
            yield node
            node = node.parent

    def clear(self) -> None:
        """Drop every stored prefix (counters are kept)."""
        with self._lock:
            self._roots.clear()
            self.bytes = self.entries = 0

    def stats(self) -> dict:
        """Hits, misses, hit rate, tokens reused/prefilled, bytes held, capacity, entries (tree nodes)."""
        with self._lock:
            looked = self.hits + self.misses
            return {
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": round(self.hits / looked, 4) if looked else 0.0,
                "tokens_reused": self.tokens_reused,
                "tokens_prefilled": self.tokens_prefilled,
                "bytes": self.bytes,
                "capacity_bytes": self.capacity_bytes,
                "entries": self.entries,
            }


def layer_pieces(pieces: Sequence[torch.Tensor], layer: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One layer's keys and values of :meth:`PrefixCache.match`'s pieces, each ``[1, heads, run, head_dim]``
    (views: concatenate or copy them, never write into them)."""
    return [p[layer, 0][None] for p in pieces], [p[layer, 1][None] for p in pieces]


def default_capacity_bytes(device: str | torch.device) -> int:
    """Default bound: 4 GB on CPU (at most a quarter of the free RAM); 20% of free GPU memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * GPU_FRACTION)
    try:
        import psutil

        available = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - psutil is pinned; a sandbox may hide /proc: keep the default
        available = 4 * DEFAULT_CPU_MB * 2**20
    return int(min(DEFAULT_CPU_MB * 2**20, available // 4))


def describe(stats: dict | None) -> str:
    """One line for the Model tab, e.g. "Prefix cache: 75% hits (6/8), 12,480 tokens reused, 41 MB of 4096 MB"."""
    if not stats:
        return "Prefix cache: not available for this decoder"
    if not stats.get("capacity_bytes"):
        return "Prefix cache: off"
    looked = stats["hits"] + stats["misses"]
    rate = f"{stats['hit_rate']:.0%} hits ({stats['hits']}/{looked})" if looked else "no lookups yet"
    mb, cap = stats["bytes"] / 2**20, stats["capacity_bytes"] / 2**20
    return f"Prefix cache: {rate}, {stats['tokens_reused']:,} tokens reused, {mb:.0f} MB of {cap:.0f} MB"
