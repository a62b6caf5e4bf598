"""A key/value cache shared by many sequences: positions in blocks, prefixes shared between
sequences and kept after them for reuse, the least recently used dropped first when the pool is full.

The pool holds keys and values for its cells, k and v (n_layer, n_cells, n_head_kv, head_dim)
float16, in blocks of BLOCK consecutive cells. A sequence (PooledCache) maps its positions to
cells through the blocks it holds: position t is cell blocks[t // BLOCK] * BLOCK + t % BLOCK, and
the attention kernels read through that map (camelid.model.ops.attention's rows).

Blocks whose tokens are final become nodes of a prefix tree: a full block as soon as its sequence
has stored all of its positions (a full block is never written again), the last, partial block
when its sequence ends. A new sequence walks the tree with its prompt: it shares the nodes of the
full blocks it matches (read only; node.refs counts the sequences holding a node) and copies the
matched cells of the next node, full or partial, into a block of its own, so a sequence writes
only to blocks that nobody else reads. A node that no sequence holds stays in the tree as cache;
when no block is free, the least recently used leaves go first (the deepest first among equals),
as in SGLang's radix cache and vLLM's prefix caching.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Sequence

import numpy as np

from camelid.errors import CamelidError

BLOCK = 16  # positions per block


class _Node:
    """A block of the prefix tree: its cell block, its tokens (BLOCK of them, or fewer for the
    last block of a finished sequence), the sequences holding it, and when it was last used."""

    __slots__ = ("block", "tokens", "parent", "children", "refs", "used", "depth")

    def __init__(self, block: int, tokens: tuple[int, ...], parent: "_Node | None", used: int):
        self.block, self.tokens, self.parent = block, tokens, parent
        self.children: dict[tuple[int, ...], _Node] = {}
        self.refs = 0
        self.used = used
        self.depth = 0 if parent is None else parent.depth + 1

    @property
    def full(self) -> bool:
        return len(self.tokens) == BLOCK


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class KVPool:
    """Keys and values of every sequence of one network, in n_cells positions (rounded up to whole
    blocks). `sequence()` hands out a PooledCache; its finished prefixes stay for later sequences."""

    def __init__(self, n_layer: int, n_cells: int, n_head_kv: int, head_dim: int):
        self.n_blocks = max(1, -(-n_cells // BLOCK))
        shape = (n_layer, self.n_blocks * BLOCK, n_head_kv, head_dim)
        try:
            self.k = np.zeros(shape, dtype=np.float16)
            self.v = np.zeros(shape, dtype=np.float16)
        except (MemoryError, ValueError):  # ValueError: more bytes than an array can have
            need = 4 * n_layer * self.n_blocks * BLOCK * n_head_kv * head_dim
            raise CamelidError(f"the key/value cache for {n_cells} tokens needs {need / 2**30:.1f} GiB, more than can be "
                               "allocated; use a smaller context (-c) or a smaller model.") from None
        self.free = list(range(self.n_blocks - 1, -1, -1))  # pop() takes the lowest block first
        self.root = _Node(-1, (), None, 0)
        self.clock = itertools.count(1)
        self.n_cached_blocks = 0  # blocks of nodes that no sequence holds
        self.n_evicted_blocks = 0

    @property
    def n_cells(self) -> int:
        return self.n_blocks * BLOCK

    def sequence(self, n_ctx: int) -> "PooledCache":
        """A new, empty sequence of at most n_ctx positions."""
        return PooledCache(self, n_ctx)

    def usage(self) -> tuple[int, int]:
        """(cells held by sequences, cells kept only as cache)."""
        cached = self.n_cached_blocks * BLOCK
        return self.n_cells - len(self.free) * BLOCK - cached, cached

    # ---- the prefix tree ----

    def match(self, tokens: Sequence[int]) -> tuple[list[_Node], _Node | None, int]:
        """The nodes of the full blocks that `tokens` starts with, in order; then the node whose
        tokens share the most with what follows, and how many (0: none)."""
        node, path, i = self.root, [], 0
        while True:
            segment = tuple(tokens[i:i + BLOCK])
            child = node.children.get(segment) if len(segment) == BLOCK else None
            if child is None:
                break
            path.append(child)
            node, i = child, i + BLOCK
        best, best_n = None, 0
        for child in node.children.values():
            n = _common_length(child.tokens, segment)
            if n > best_n:
                best, best_n = child, n
        return path, best, best_n

    def hold(self, node: _Node) -> None:
        if node.refs == 0:
            self.n_cached_blocks -= 1
        node.refs += 1
        node.used = next(self.clock)

    def let_go(self, node: _Node) -> None:
        node.refs -= 1
        node.used = next(self.clock)
        if node.refs == 0:
            self.n_cached_blocks += 1

    def publish(self, parent: _Node, block: int, tokens: tuple[int, ...]) -> _Node | None:
        """Make a block whose tokens are final a child of `parent`, held by its sequence; None when
        the tree has that child already (the block stays the sequence's own). A full block replaces
        the partial ones it extends that nobody holds."""
        if tokens in parent.children:
            return None
        if len(tokens) == BLOCK:
            for old in [c for c in parent.children.values() if not c.full and c.refs == 0 and tokens[:len(c.tokens)] == c.tokens]:
                self._drop(old)
        node = _Node(block, tokens, parent, next(self.clock))
        node.refs = 1
        parent.children[tokens] = node
        return node

    def _drop(self, node: _Node) -> None:
        """Remove a leaf that nobody holds; its block becomes free."""
        del node.parent.children[node.tokens]
        self.free.append(node.block)
        self.n_cached_blocks -= 1

    # ---- blocks ----

    def allocate(self, n: int) -> list[int]:
        """n free blocks, evicting the least recently used cached prefixes when too few are free."""
        if len(self.free) < n:
            self._evict(n - len(self.free))
        if len(self.free) < n:
            raise CamelidError(f"the key/value pool of {self.n_cells} tokens is full: every position is in use by a "
                               "running sequence; use a larger context (-c) or fewer parallel sequences.")
        return [self.free.pop() for _ in range(n)]

    def _evict(self, n: int) -> None:
        """Free at least n blocks if the cache has them: leaves nobody holds, least recently used first."""
        def leaves(nodes):
            return [(c.used, -c.depth, id(c), c) for c in nodes if c.refs == 0 and not c.children]

        heap = leaves(self._nodes())
        heapq.heapify(heap)
        while heap and n > 0:
            node = heapq.heappop(heap)[3]
            parent = node.parent
            self._drop(node)
            self.n_evicted_blocks += 1
            n -= 1
            if parent is not self.root:
                for entry in leaves([parent]):
                    heapq.heappush(heap, entry)

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            yield node

    def copy_cells(self, src: int, dst: int, n: int) -> None:
        """Copy the first n cells of block src into block dst, every layer."""
        a, b = src * BLOCK, dst * BLOCK
        self.k[:, b:b + n] = self.k[:, a:a + n]
        self.v[:, b:b + n] = self.v[:, a:a + n]


class PooledCache:
    """One sequence's positions in a KVPool, with the interface of camelid.model.cache.KVCache.

    blocks[i] holds positions i * BLOCK.. ; the first len(nodes) of them are tree nodes this
    sequence holds (never written again), the others its own. `release()` ends the sequence and
    leaves its prefix in the pool's cache.
    """

    def __init__(self, pool: KVPool, n_ctx: int):
        self.pool, self.n_ctx = pool, n_ctx
        self.tokens: list[int] = []
        self.blocks: list[int] = []
        self.nodes: list[_Node] = []
        self.publishing = True  # whether its full blocks still join the tree (its chain is in it)
        self._cells = np.empty(0, np.int64)  # (len(blocks) * BLOCK,) the cell of each position

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def n_free(self) -> int:
        return self.n_ctx - len(self.tokens)

    def common_prefix(self, tokens: Sequence[int]) -> int:
        """Length of the longest prefix of `tokens` whose keys and values this sequence or the pool holds."""
        own = _common_length(self.tokens, tokens)
        path, _, n = self.pool.match(tokens)
        return max(own, len(path) * BLOCK + n)

    def keep_prefix(self, tokens: Sequence[int], n: int) -> None:
        """Hold exactly the first n of `tokens`: from this sequence if it has them, else from the pool."""
        if n <= _common_length(self.tokens, tokens):
            self.truncate(n)
            return
        self.truncate(0)
        pool = self.pool
        path, after, m = pool.match(tokens)
        full, rest = divmod(n, BLOCK)
        source = path[full] if full < len(path) else after
        if full > len(path) or (rest and (source is None or (source is after and m < rest))):
            raise ValueError(f"the pool does not hold the first {n} of these tokens")
        for node in path[:full]:
            pool.hold(node)
        self.nodes, self.blocks = path[:full], [node.block for node in path[:full]]
        if rest:
            pool.hold(source)  # not evicted while a block is found for its copy
            block = pool.allocate(1)[0]
            pool.copy_cells(source.block, block, rest)
            pool.let_go(source)
            self.blocks.append(block)
        self.tokens = [int(t) for t in tokens[:n]]
        self._update_cells()

    def truncate(self, n: int) -> None:
        """Forget every position from n on; a shared block that keeps some of them is copied first."""
        if n >= len(self.tokens):
            return
        pool = self.pool
        full, rest = divmod(n, BLOCK)
        tail = None
        if rest:
            tail = self.blocks[full]
            if full < len(self.nodes):  # shared: copy its kept cells into a block of our own
                tail = pool.allocate(1)[0]
                pool.copy_cells(self.blocks[full], tail, rest)
        for node in self.nodes[full:]:
            pool.let_go(node)
        pool.free.extend(b for b in self.blocks[max(full, len(self.nodes)):] if b != tail)
        self.nodes = self.nodes[:full]
        self.blocks = self.blocks[:full] + ([tail] if rest else [])
        self.publishing = True
        del self.tokens[n:]
        self._update_cells()

    def clear(self) -> None:
        self.truncate(0)

    def release(self, keep: bool = True) -> None:
        """End the sequence: with keep, its last, partial block joins the tree too; then every block
        goes back to the pool (the tree's as cache)."""
        rest = len(self.tokens) % BLOCK
        if keep and rest and self.publishing and len(self.nodes) == len(self.blocks) - 1:
            parent = self.nodes[-1] if self.nodes else self.pool.root
            node = self.pool.publish(parent, self.blocks[-1], tuple(self.tokens[-rest:]))
            if node is not None:
                self.nodes.append(node)
        self.truncate(0)

    def prepare(self, n: int) -> None:
        """Hold blocks for n more positions."""
        need = -(-(len(self.tokens) + n) // BLOCK) - len(self.blocks)
        if need > 0:
            self.blocks += self.pool.allocate(need)
            self._update_cells()

    def commit(self, tokens) -> None:
        """Record the tokens just stored; blocks they fill join the tree."""
        self.tokens.extend(int(t) for t in tokens)
        while self.publishing and len(self.nodes) < len(self.tokens) // BLOCK:
            i = len(self.nodes)
            parent = self.nodes[-1] if self.nodes else self.pool.root
            node = self.pool.publish(parent, self.blocks[i], tuple(self.tokens[i * BLOCK:(i + 1) * BLOCK]))
            if node is None:
                self.publishing = False
            else:
                self.nodes.append(node)

    def view(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pool's keys and values of one layer (n_cells, n_head_kv, head_dim) and the cells of
        positions 0..end-1 (camelid.model.ops.attention's rows)."""
        return self.pool.k[layer], self.pool.v[layer], self._cells[:end]

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v (n_tokens, n_head_kv, head_dim) for positions start.. of one layer."""
        if start < len(self.nodes) * BLOCK:
            raise ValueError("a sequence cannot write to a block it shares")
        cells = self._cells[start:start + len(k)]
        if len(cells) and cells[-1] - cells[0] == len(cells) - 1:  # within one block: a plain slice
            cells = slice(int(cells[0]), int(cells[-1]) + 1)
        self.pool.k[layer, cells] = k
        self.pool.v[layer, cells] = v

    def _update_cells(self) -> None:
        blocks = np.asarray(self.blocks, dtype=np.int64)
        self._cells = (blocks[:, None] * BLOCK + np.arange(BLOCK)).reshape(-1)
