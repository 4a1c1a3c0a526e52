"""A rich progress bar for training epochs, labelled per fit (a no-op when disabled)."""

from __future__ import annotations


class EpochBar:
    """Epochs done, train/val/best loss; ``label`` says which fit this is (e.g. "fit 2/3")."""

    def __init__(self, enabled: bool, total: int, label: str = "train"):
        self.p = None
        if enabled:
            from rich.markup import escape
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn(f"[bold]{escape(label)}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("loss {task.fields[tl]:.4f}  val {task.fields[vl]:.4f}  best {task.fields[best]:.4f}"),
                              TimeElapsedColumn(), transient=False)
            self.task = self.p.add_task("epochs", total=total, tl=float("nan"), vl=float("nan"), best=float("nan"))
            self.p.start()

    def update(self, epoch, tl, vl, best):
        if self.p:
            self.p.update(self.task, completed=epoch + 1, tl=tl, vl=vl, best=best)

    def close(self):
        if self.p:
            self.p.stop()


__all__ = ["EpochBar"]
