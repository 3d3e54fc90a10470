"""Score only the positions that carry a label when training on a device without Triton.

TRL 1.16 computes SFT's loss with a fused, chunked LM head (``trl.kernels.ChunkedLogProbFunction``).
On CUDA it projects only the positions with a label onto the vocabulary; elsewhere (a CPU) it
projects every position and masks the prompt's away afterwards, a choice TRL makes so that
fixed-shape accelerators (Neuron) do not recompile on every batch. For a chat pair, whose labels
are its answer, most of that vocabulary projection (a 49k-row matrix for SmolLM2) is thrown away:
on 2 CPU cores it was about 40% of a training step.

:func:`score_labelled_positions_only` makes TRL take its compact path everywhere. The loss is the
same sum over the same labelled tokens (``tests/test_train.py`` checks it against a plain
cross-entropy), so a run's numbers do not change; only the wasted work goes.
"""

from __future__ import annotations

import trl.trainer.utils as trl_utils


def score_labelled_positions_only() -> None:
    """Make TRL's fused SFT loss project only labelled positions, on every device."""
    trl_utils._use_triton = _compact


def _compact(device) -> bool:  # TRL's name for "score the labelled positions only"
    return True
