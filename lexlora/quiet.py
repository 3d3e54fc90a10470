"""Keep the libraries' own progress bars and info logs out of lexlora's output."""

from __future__ import annotations

import warnings


def quiet_libraries() -> None:
    """lexlora prints its own progress and summaries; the libraries' per-step bars, "loading
    weights" bars and deprecation notices about their own internals would bury them."""
    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
