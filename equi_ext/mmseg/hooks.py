"""``ImageProgressHook``: a progress bar over the images of each test run (MMEngine's logger prints every
50 iterations at INFO; equi-ext's tools log at WARNING and an attacked, defended pass takes minutes)."""

from __future__ import annotations

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ..progress import image_bar


@HOOKS.register_module()
class ImageProgressHook(Hook):
    """One bar per test run, named ``label`` (the evaluation functions set it to the scenario or cell)."""

    priority = "VERY_LOW"

    def __init__(self, label: str = "test") -> None:
        self.label = label
        self._bar = None

    def before_test_epoch(self, runner) -> None:
        self.after_test_epoch(runner)  # a run that raised left its bar open
        self._bar = image_bar(len(runner.test_loop.dataloader.dataset), self.label, main_process=is_main_process())

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._bar is not None:
            self._bar.update(len(outputs) if outputs is not None else 1)

    def after_test_epoch(self, runner, metrics=None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def label_progress(runner, label: str) -> None:
    """Name the next test run's bar ``label``, registering the hook if the config did not list one."""
    hook = next((h for h in runner.hooks if isinstance(h, ImageProgressHook)), None)
    if hook is None:
        hook = ImageProgressHook()
        runner.register_hook(hook)
    hook.label = label
