"""The one progress interface: a rich bar in a terminal, plain lines in logs."""

from __future__ import annotations

import io

from rich.console import Console

from lexlora.progress import Bar


def test_outside_a_terminal_progress_is_a_few_plain_lines(capsys):
    console = Console(file=io.StringIO(), force_terminal=False)
    with Bar("train", 10, console=console, template="loss {loss:.2f}", every_s=0, loss=9.0) as bar:
        bar.update(completed=3, loss=2.5)
        bar.update(advance=2)
        bar.print("step 5: eval loss 1.00")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "train: 3/10 loss 2.50",
        "train: 5/10 loss 2.50",
        "step 5: eval loss 1.00",
        "train: 5/10 loss 2.50",
    ]
    assert console.file.getvalue() == ""  # no bar escape codes in a log


def test_a_slow_log_gets_a_line_at_most_every_interval(capsys):
    console = Console(file=io.StringIO(), force_terminal=False)
    with Bar("building", console=console, every_s=3600) as bar:
        for done in range(1, 101):
            bar.update(completed=done, total=100)
    assert capsys.readouterr().out.splitlines() == ["building: 100/100"]  # the closing line


def test_in_a_terminal_it_is_a_rich_bar():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with Bar("teacher chunks", console=console, transient=False) as bar:
        bar.update(advance=4, total=8)
    assert "teacher chunks" in console.file.getvalue() and "4/8" in console.file.getvalue()
