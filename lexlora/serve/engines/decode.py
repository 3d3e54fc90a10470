"""A running batch: rows for any mix of adapters decoded together, one forward pass per step.

Rows are left-padded in one KV cache (``DynamicCache``). New rows join between steps: they are
prefilled together in one pass and their cache is padded on the left to the batch's length and
appended; finished or cancelled rows leave, and columns that became padding for every row are
trimmed. Each row carries its own positions, adapter name, sampling settings and limits.

Rows that score their prompt (``prompt_logprobs``, or ``max_tokens`` 0) are prefilled apart, in
passes of at most ``SCORE_TOKENS`` padded tokens that keep every position's logits: they get their
prompt's log-probs first, then (unless they only score) join the batch like any other row.
Score-only rows for one adapter that share a long prefix (a question scored with each of its
options, as log-likelihood clients send it) encode that prefix once and reuse its KV cache.

One row's failure is that row's alone: seeding, sampling, stop checks and decoding run per row, and
a forward pass that raises for the whole batch is rerun row by row (the cache cropped back first),
so only the rows that fail on their own get the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import torch
from transformers import DynamicCache

from lexlora.serve.engines.base import PromptLogprobs, TokenLogprob
from lexlora.serve.engines.rows import Row, choose_token, token_logprobs

log = logging.getLogger("lexlora.serve")

SCORE_TOKENS = 2048  # padded prompt tokens per scoring pass (all their logits are kept)
MIN_SHARED = 16  # score-only rows sharing at least this many leading tokens share their encoding

# forward(input_ids, attention_mask, position_ids, cache, adapter_names, every_position) ->
# the last position's logits [rows, vocab], or every position's [rows, width, vocab]
Forward = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, DynamicCache, list[str], bool], torch.Tensor
]


def _select(cache: DynamicCache, row: int) -> DynamicCache:
    """A new one-row cache with row ``row`` of ``cache``."""
    one = DynamicCache()
    for i, layer in enumerate(cache.layers):
        one.update(layer.keys[row : row + 1], layer.values[row : row + 1], i)
    return one


def _pad_left(t: torch.Tensor, extra: int, dim: int) -> torch.Tensor:
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class DecodeBatch:
    """Rows being decoded, their shared KV cache and attention mask."""

    def __init__(
        self,
        forward: Forward,
        decode: Callable[[list[int]], str],
        *,
        pad_id: int,
        eos_ids: set[int],
        max_context: int,
    ) -> None:
        self._forward = forward
        self._decode = decode
        self._pad_id = pad_id
        self._eos_ids = eos_ids
        self._max_context = max_context
        self.rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cached columns], 1 = real token
        self.generated_tokens = 0
        self.peak_rows = 0  # most rows in one forward pass so far

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: list[Row]) -> None:
        """Prefill ``rows`` in one pass, choose their first tokens and join them to the batch (a
        failed pass is rerun row by row)."""
        started = []
        for row in rows:
            if not row.cancelled.is_set() and _guarded(row, partial(row.start, self._decode)):
                started.append(row)
        self._prefill([r for r in started if not r.scores_prompt])
        scoring = [r for r in started if r.scores_prompt and r.request.sampling.max_tokens > 0]
        clusters = _prefix_clusters([r for r in started if r.request.sampling.max_tokens == 0])
        scoring += [members[0] for _, members in clusters if len(members) == 1]
        for group in _cluster_passes([c for c in clusters if len(c[1]) > 1]):
            self._score_shared(group)
        for group in _scoring_groups(scoring):
            self._prefill_scoring(group)

    def _score_shared(self, clusters: list[tuple[int, list[Row]]]) -> None:
        """Score-only rows in ``clusters`` (one adapter each; the first ``shared`` tokens of a
        cluster's rows are the same): every cluster's prefix in one pass, right-padded, then
        the rests together on copies of their prefix's KV cache (a failed pass is rerun row by
        row). A score-only row's last token predicts nothing that is returned, so it is never
        run: a row whose only own token is its last (an option of one token) needs no rest pass,
        its log-prob is read at the end of the prefix."""
        rows = [row for _, members in clusters for row in members]
        owner = torch.tensor([c for c, (_, members) in enumerate(clusters) for _ in members])
        starts = torch.tensor([shared for shared, _ in clusters])[owner]
        prefixes = [members[0].request.prompt_ids[:shared] for shared, members in clusters]
        ids, prefix_mask = self._right_padded(prefixes)
        resting = [i for i, r in enumerate(rows) if r.prompt_len - int(starts[i]) > 1]
        cache = DynamicCache()
        tails: dict[int, torch.Tensor] = {}
        try:
            positions = torch.arange(ids.shape[1]).expand(len(prefixes), -1)
            adapters = [members[0].peft_adapter for _, members in clusters]
            head = self._forward(ids, prefix_mask, positions, cache, adapters, True)
            if resting:
                index = owner[resting]
                cache.batch_select_indices(index)
                rests = [rows[i].request.prompt_ids[int(starts[i]) : -1] for i in resting]
                rest_ids, rest_mask = self._right_padded(rests)
                mask = torch.cat([prefix_mask[index], rest_mask], dim=1)
                positions = starts[resting][:, None] + torch.arange(rest_ids.shape[1])
                names = [rows[i].peft_adapter for i in resting]
                tail = self._forward(rest_ids, mask, positions, cache, names, True)
                tail = torch.log_softmax(tail.float(), dim=-1)
                tails = {i: tail[n] for n, i in enumerate(resting)}
        except Exception as exc:
            log.warning("a shared-prefix scoring pass failed (%r): rerunning row by row", exc)
            for row in rows:
                self._prefill_scoring([row])
            return
        head = torch.log_softmax(head.float(), dim=-1)  # each prefix's log-probs, once
        memo: dict[tuple[int, int], list[TokenLogprob]] = {}  # (cluster, k) → prefix entries
        for i, row in enumerate(rows):
            if row.cancelled.is_set():
                row.done = True
                continue
            c, shared = int(owner[i]), int(starts[i])
            work = partial(_score_shared_prompt, row, shared, head[c], tails.get(i), memo, c)
            _guarded(row, work)

    def _right_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(seq) for seq in seqs)
        ids = torch.tensor([seq + [self._pad_id] * (width - len(seq)) for seq in seqs])
        mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in seqs])
        return ids, mask

    def _inputs(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids, attention mask and positions of ``rows``' prompts."""
        width = max(r.prompt_len for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - row.prompt_len :] = torch.tensor(row.request.prompt_ids)
            mask[i, width - row.prompt_len :] = 1
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def _prefill_scoring(self, rows: list[Row]) -> None:
        """One pass keeping every position's logits: each row's prompt log-probs, then the rows
        that go on generating join the batch (a failed pass is rerun row by row)."""
        ids, mask, positions = self._inputs(rows)
        cache = DynamicCache()
        adapters = [r.peft_adapter for r in rows]
        try:
            logits = self._forward(ids, mask, positions, cache, adapters, True)
        except Exception as exc:
            if len(rows) == 1:
                log.warning("a scoring pass failed for one row: %r", exc)
                rows[0].fail(exc)
            else:
                for row in rows:
                    self._prefill_scoring([row])
            return
        width = ids.shape[1]
        for i, row in enumerate(rows):
            if row.cancelled.is_set():
                row.done = True
            else:
                _guarded(row, partial(_score_prompt, row, logits[i, width - row.prompt_len :]))
        going_on = [i for i, row in enumerate(rows) if not row.done]
        if not going_on:
            return
        index = torch.tensor(going_on)
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        self._join([rows[i] for i in going_on], cache, mask[index])
        self._advance([rows[i] for i in going_on], logits[index, -1])

    def _prefill(self, rows: list[Row]) -> None:
        if not rows:
            return
        ids, mask, positions = self._inputs(rows)
        cache = DynamicCache()
        try:
            logits = self._forward(
                ids, mask, positions, cache, [r.peft_adapter for r in rows], False
            )
        except Exception as exc:
            if len(rows) == 1:
                log.warning("prefill failed for one row: %r", exc)
                rows[0].fail(exc)
            else:
                for row in rows:
                    self._prefill([row])
            return
        self._join(rows, cache, mask)
        self._advance(rows, logits)

    def step(self) -> None:
        """One decode step for every row (one forward pass), then drop the rows that ended."""
        self._drop_cancelled()
        if not self.rows:
            return
        ids = torch.tensor([[r.generated[-1]] for r in self.rows])
        positions = torch.tensor([[r.prompt_len + len(r.generated) - 1] for r in self.rows])
        assert self._mask is not None and self._cache is not None
        columns = self._mask.shape[1]
        mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=1)
        adapters = [r.peft_adapter for r in self.rows]
        self.peak_rows = max(self.peak_rows, len(self.rows))
        try:
            logits = self._forward(ids, mask, positions, self._cache, adapters, False)
        except Exception as exc:
            log.warning("a step failed for %d rows (%r): rerunning row by row", len(ids), exc)
            for layer in self._cache.layers:  # undo the layers the failed pass extended
                layer.keys, layer.values = layer.keys[:, :, :columns], layer.values[:, :, :columns]
            logits = self._step_alone(ids, mask, positions)
        else:
            self._mask = mask
        self._advance(self.rows, logits)

    def fail(self, error: BaseException) -> None:
        """Tell every row the batch failed, and empty it."""
        for row in self.rows:
            row.fail(error)
        self.rows, self._cache, self._mask = [], None, None

    # -- internals ------------------------------------------------------------------------------

    def _step_alone(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """One step for each row on its own; a row whose pass still fails leaves with the error.
        The batch is rebuilt from the rows that passed; returns their logits."""
        assert self._cache is not None
        rows, cache = self.rows, self._cache
        self.rows, self._cache, self._mask = [], None, None
        passed = []
        for i, row in enumerate(rows):
            one, one_row = _select(cache, i), slice(i, i + 1)
            try:
                logits = self._forward(
                    ids[one_row], mask[one_row], positions[one_row], one, [row.peft_adapter], False
                )
            except Exception as exc:
                log.warning("a decode step failed for one row: %r", exc)
                row.fail(exc)
                continue
            self._join([row], one, mask[one_row])
            passed.append(logits)
        return torch.cat(passed) if passed else torch.empty(0)

    def _advance(self, rows: list[Row], logits: torch.Tensor) -> None:
        for i, row in enumerate(rows):
            if row.cancelled.is_set():
                row.done = True
                continue
            _guarded(row, partial(self._next_token, row, logits[i]))
        self._prune()

    def _next_token(self, row: Row, logits: torch.Tensor) -> None:
        token = choose_token(logits, row)
        row.generated.append(token)
        self.generated_tokens += 1
        sampling = row.request.sampling
        ends_row = token in self._eos_ids and not sampling.ignore_eos
        if sampling.logprobs is not None and not ends_row:  # the EOS is not part of the text
            logprobs = torch.log_softmax(logits.float(), dim=-1).unsqueeze(0)
            row.pending.extend(token_logprobs(logprobs, [token], sampling.logprobs))
        self._check_end(row, token, ends_row)

    def _check_end(self, row: Row, token: int, ends_row: bool) -> None:
        sampling = row.request.sampling
        assert row.text is not None
        if ends_row:
            self._emit_text(row, row.text.flush(row.generated[:-1]))
            row.finish("stop")
            return
        delta, stopped = row.text.advance(row.generated)
        if stopped:
            self._emit_text(row, delta)
            row.finish("stop")
        elif (
            len(row.generated) >= sampling.max_tokens
            or row.prompt_len + len(row.generated) >= self._max_context
        ):
            self._emit_text(row, delta + row.text.flush(row.generated))
            row.finish("length")
        else:
            self._emit_text(row, delta)

    @staticmethod
    def _emit_text(row: Row, text: str) -> None:
        row.release(text)

    def _drop_cancelled(self) -> None:
        for row in self.rows:
            if row.cancelled.is_set():
                row.done = True
        self._prune()

    def _join(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append ``rows`` with their ``cache`` and ``mask``, padding the narrower side left."""
        if self._cache is None or self._mask is None or not self.rows:
            self.rows, self._cache, self._mask = list(rows), cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        old_extra, new_extra = width - self._mask.shape[1], width - mask.shape[1]
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat(
                [_pad_left(old.keys, old_extra, 2), _pad_left(new.keys, new_extra, 2)]
            )
            old.values = torch.cat(
                [_pad_left(old.values, old_extra, 2), _pad_left(new.values, new_extra, 2)]
            )
        self._mask = torch.cat([_pad_left(self._mask, old_extra, 1), _pad_left(mask, new_extra, 1)])
        self.rows += rows

    def _prune(self) -> None:
        """Remove ended rows from the batch, then padding columns no row needs any more."""
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep or self._cache is None or self._mask is None:
            self.rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep)
        self._mask = self._mask[index]
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]


def _scoring_groups(rows: list[Row]) -> list[list[Row]]:
    """``rows`` by prompt length, cut into passes of at most ``SCORE_TOKENS`` padded tokens (a
    longer row goes alone)."""
    groups: list[list[Row]] = []
    width = 0
    for row in sorted(rows, key=lambda r: r.prompt_len):  # similar lengths: little padding
        wider = max(width, row.prompt_len)
        if groups and wider * (len(groups[-1]) + 1) <= SCORE_TOKENS:
            groups[-1].append(row)
            width = wider
        else:
            groups.append([row])
            width = row.prompt_len
    return groups


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _prefix_clusters(rows: list[Row]) -> list[tuple[int, list[Row]]]:
    """Score-only ``rows`` grouped by shared leading tokens: (shared length, rows).

    Rows are visited in token order per adapter, so rows with the most leading tokens in common
    (a question scored with each of its options) lie side by side. A row joins the cluster before
    it when that saves encoded tokens (its shared tokens, less what the members lose if their
    shared part shrinks) and at least ``MIN_SHARED`` tokens are shared: a question's options
    share the question, not only the system turn every question has. Every row keeps one token of
    its own; a cluster's rests stay within ``SCORE_TOKENS`` padded tokens.
    """
    clusters: list[tuple[int, list[Row]]] = []
    for row in sorted(rows, key=lambda r: (str(r.peft_adapter), r.request.prompt_ids)):
        ids = row.request.prompt_ids
        if clusters and clusters[-1][1][0].peft_adapter == row.peft_adapter:
            shared, members = clusters[-1]
            n = min(shared, _common_prefix(members[0].request.prompt_ids, ids), len(ids) - 1)
            saved = len(members) * n - (len(members) - 1) * shared
            widest = max(r.prompt_len - n for r in [*members, row])
            if n >= MIN_SHARED and saved > 0 and widest * (len(members) + 1) <= SCORE_TOKENS:
                clusters[-1] = (n, [*members, row])
                continue
        clusters.append((len(ids) - 1, [row]))
    return clusters


def _cluster_passes(
    clusters: list[tuple[int, list[Row]]],
) -> list[list[tuple[int, list[Row]]]]:
    """``clusters`` cut into passes whose prefixes and whose rests each stay within
    ``SCORE_TOKENS`` padded tokens (a larger cluster goes alone)."""
    passes: list[list[tuple[int, list[Row]]]] = []
    for cluster in sorted(clusters, key=lambda c: c[0]):  # similar prefix lengths together
        group = [*passes[-1], cluster] if passes else [cluster]
        prefix = max(n for n, _ in group) * len(group)
        rows = [(n, r) for n, members in group for r in members]
        rest = max(r.prompt_len - n for n, r in rows) * len(rows)
        if passes and prefix <= SCORE_TOKENS and rest <= SCORE_TOKENS:
            passes[-1] = group
        else:
            passes.append([cluster])
    return passes


def _score_prompt(row: Row, logits: torch.Tensor) -> None:
    """Emit ``row``'s prompt log-probs from its ``[prompt_len, vocab]`` logits (each position
    predicts the next token); a score-only row ends here."""
    request = row.request
    if request.prompt_logprobs is not None:
        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
        entries = token_logprobs(logprobs, request.prompt_ids[1:], request.prompt_logprobs)
        row.emit(PromptLogprobs(tuple(entries)))
    if request.sampling.max_tokens == 0:
        row.finish("length")


def _score_shared_prompt(
    row: Row,
    shared: int,
    head: torch.Tensor,
    tail: torch.Tensor | None,
    memo: dict[tuple[int, int], list[TokenLogprob]],
    cluster: int,
) -> None:
    """Emit ``row``'s prompt log-probs from its cluster's prefix log-probs ``head`` (whose
    entries are made once per cluster and ``k``, in ``memo``) and its own rest's ``tail``; a
    score-only row ends here."""
    request = row.request
    k = request.prompt_logprobs
    if k is not None:
        ids = request.prompt_ids
        if (cluster, k) not in memo:  # the prefix's own tokens: the same for every row
            memo[cluster, k] = token_logprobs(head[: shared - 1], ids[1:shared], k)
        first = token_logprobs(head[shared - 1 : shared], ids[shared : shared + 1], k)
        rest = (
            []
            if tail is None
            else token_logprobs(tail[: len(ids) - shared - 1], ids[shared + 1 :], k)
        )
        row.emit(PromptLogprobs(tuple(memo[cluster, k] + first + rest)))
    if request.sampling.max_tokens == 0:
        row.finish("length")


def _guarded(row: Row, work: Callable[[], None]) -> bool:
    """Run ``work`` (per-row work for ``row``); if it raises, fail that row alone. True when it
    ran through."""
    try:
        work()
    except Exception as exc:
        log.warning("a row failed: %r", exc)
        row.fail(exc)
        return False
    return True
