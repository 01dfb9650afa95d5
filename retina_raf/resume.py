"""Stopping and resuming a training run (docs/design.md#training): what :mod:`retina_raf.train`
needs so that a run killed or stopped at any moment continues where it was.

- :func:`save_checkpoint` / :func:`restore_checkpoint`: the model, optimizer, scheduler, RNG
  states, history and config of a run (``checkpoint.pt``, written atomically by
  :func:`retina_raf.runs.save_checkpoint`), and the ``partial`` entry of an epoch stopped
  between two batches;
- :func:`rng_state` / :func:`set_rng_state`: every random generator training draws from (torch's,
  CUDA's, the shuffling and augmentation generators);
- :class:`PartialEpoch` and :class:`EpochBatches`: an epoch stopped at a batch boundary, and
  the batches of an epoch resumed inside it;
- :class:`StopOnSignal`: the signals that ask training to stop.

**SIGTERM** (what SLURM sends before a time limit, a preemption or a requeue) and **SIGINT**
(Ctrl-C) stop the run at the next batch boundary: it writes a checkpoint of the partial epoch
and raises :class:`~retina_raf.errors.RunInterrupted`, and ``retina-raf train`` exits with
status 128 + the signal's number (143 for SIGTERM, 130 for SIGINT). Started again (a requeued
job runs the same command), the run resumes inside that epoch. A signal handler that was
installed before (submitit's, for its time-limit signal) runs once the checkpoint is written.

On the CPU with ``train.deterministic`` a resumed run ends with bitwise the same weights
(and history) as an uninterrupted one, wherever it stopped: the shuffling, augmentation and
dropout/noise generators are checkpointed with the model, and a partial epoch redraws its
permutation and continues its sums.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from retina_raf import runs
from retina_raf.config import RunConfig, to_dict
from retina_raf.data import Augmenter
from retina_raf.errors import RunInterrupted


# --------------------------------------------------------------------------- RNG states
def rng_state(shuffle: torch.Generator, augmenter: Augmenter | None) -> dict:
    """The state of every generator training draws from (a checkpoint's ``rng`` entry)."""
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if augmenter is not None:
        state["augment"] = augmenter.generator.get_state()
    return state


def set_rng_state(state: dict, shuffle: torch.Generator, augmenter: Augmenter | None) -> None:
    """Restore :func:`rng_state`. Every generator, CUDA ones included, takes its state as a
    CPU ByteTensor: checkpoints are loaded to the CPU for this reason."""
    torch.set_rng_state(state["torch"].cpu())
    shuffle.set_state(state["shuffle"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if augmenter is not None and "augment" in state:
        augmenter.generator.set_state(state["augment"].cpu())


# ------------------------------------------------------------------------ partial epochs
@dataclass
class PartialEpoch:
    """How far an epoch got before it stopped at a batch boundary (SIGTERM).

    Attributes:
        batches: batches done.
        loss_sum: sum of the per-image losses so far (the value of the float32 accumulator).
        correct: correctly classified training images so far.
        rng: RNG states at the stop (:func:`rng_state`), restored once the done batches have
            been skipped; their augmentation is redrawn and discarded on the way.
    """

    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    rng: dict | None = None

    def record(self, shuffle_start: torch.Tensor) -> dict:
        """What a checkpoint keeps (its ``partial`` entry), with the shuffle generator's state
        at the start of the epoch, from which the epoch's permutation is drawn again."""
        return {"batches": self.batches, "loss_sum": self.loss_sum, "correct": self.correct,
                "shuffle_start": shuffle_start}  # fmt: skip

    @classmethod
    def from_record(cls, record: dict, rng: dict) -> PartialEpoch:
        """The inverse of :meth:`record`; ``rng``: the checkpoint's RNG states (at the stop)."""
        return cls(record["batches"], record["loss_sum"], record["correct"], rng=rng)


class EpochBatches:
    """An epoch's batches from ``start.batches`` on; ends early at a batch boundary when
    ``stop()`` says so (``stopped_at`` is then the number of batches done).

    The first batch is drawn only after ``stop()`` was asked, so a stopped epoch has drawn
    no random numbers for batches it did not train.
    """

    def __init__(self, batches, start: PartialEpoch, restore_rng, stop=None):
        self.batches, self.start, self.restore_rng, self.stop = batches, start, restore_rng, stop
        self.stopped_at: int | None = None

    def __iter__(self):
        batches = iter(self.batches)
        for _ in range(self.start.batches):  # the same permutation: the epoch's shuffle state
            next(batches)
        if self.start.batches and self.start.rng is not None:
            self.restore_rng(self.start.rng)
        index = self.start.batches
        while True:
            if self.stop is not None and self.stop():
                self.stopped_at = index
                return
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield batch
            index += 1


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    run_dir: Path,
    model,
    optimizer,
    scheduler,
    shuffle: torch.Generator,
    augmenter: Augmenter | None,
    rows: list[dict],
    cfg: RunConfig,
    partial_epoch: dict | None = None,
) -> None:
    """Write the run's ``checkpoint.pt``: everything :func:`restore_checkpoint` needs, with
    ``partial_epoch`` (:meth:`PartialEpoch.record`) when an epoch stopped between batches."""
    runs.save_checkpoint(run_dir, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": rng_state(shuffle, augmenter),
        "history": rows, "config": to_dict(cfg), "partial": partial_epoch})  # fmt: skip


def restore_checkpoint(
    state: dict,
    model,
    optimizer,
    scheduler,
    shuffle: torch.Generator,
    augmenter: Augmenter | None,
) -> tuple[list[dict], PartialEpoch | None]:
    """Load a checkpoint (:func:`retina_raf.runs.load_checkpoint`) into a freshly built run.

    The model's, optimizer's and scheduler's states are copied into their devices, the RNG
    states restored, and for a partial epoch the shuffle generator is set back to the
    epoch's start, from which its permutation is drawn again. Returns the history rows so
    far and the :class:`PartialEpoch` to resume inside (None after a whole epoch).
    """
    # loaded on the CPU: load_state_dict copies into the model's (and optimizer's) device
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], shuffle, augmenter)
    partial = None
    if state.get("partial"):
        partial = PartialEpoch.from_record(state["partial"], rng=state["rng"])
        shuffle.set_state(state["partial"]["shuffle_start"])  # the epoch's permutation
    return state["history"], partial


# ------------------------------------------------------------------------------- signals
class StopOnSignal:
    """While active, SIGTERM and SIGINT ask training to stop at the next batch boundary.

    So does SIGUSR2 when a Python handler already listens to it (submitit's signal that a
    job nears its time limit). :meth:`finish` is called once the checkpoint is written: it
    logs, runs the signal's previous Python handler if there was one (submitit requeues the
    job there), and raises :class:`RunInterrupted`. Later signals only repeat the request:
    the checkpoint is not cut short. Outside the main thread (where Python cannot install
    handlers) nothing is installed and training is never asked to stop.
    """

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            current = signal.getsignal(signum)
            # SIGINT's default handler raises KeyboardInterrupt mid-batch: it is not run after
            # the checkpoint (the run stops by RunInterrupted, as on SIGTERM)
            if signum != signal.SIGUSR2 or callable(current):
                self.previous[signum] = current
                signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _request(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def requested(self) -> bool:
        """Whether a stop was asked for (polled at every batch boundary)."""
        return self.signum is not None

    def finish(self, log: runs.RunLog, message: str) -> None:
        """After the checkpoint: log, run the previous handler, raise RunInterrupted."""
        message += "; checkpoint written, run the same command again to resume"
        log.write(message)  # the exception carries it to the caller's output
        previous = self.previous.get(self.signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)
        raise RunInterrupted(message, self.signum)
