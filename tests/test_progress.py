"""equi_ext.progress: a slow batch still moves its bar, once per attack step."""

from __future__ import annotations

from equi_ext import progress
from equi_ext.attacks import PGD


def test_attack_steps_show_on_the_open_image_bar_and_a_closed_bar_is_left_alone(toy_task, capsys):
    bar = progress.image_bar(4, "PGD-3 / vanilla")  # writes each refresh to stderr
    PGD(logits_fn=toy_task.logits, eps=4, steps=3)(toy_task.images[:2], toy_task.labels[:2])
    text = capsys.readouterr().err
    assert [f"PGD step {k}/3" in text for k in (1, 2, 3)] == [True] * 3  # one refresh per step, within the batch
    assert bar.postfix == "PGD step 3/3"
    bar.close()
    progress.note_step("PGD", 0, 3)  # no open bar: nothing to annotate, no error
    assert bar.postfix == "PGD step 3/3" and bar not in progress._OPEN  # other tests' runs may have left bars open
