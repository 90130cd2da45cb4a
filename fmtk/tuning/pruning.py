"""What ties a trial's run to its study: after each validation, the watched metric is reported to
the study and Optuna's pruner may stop the run.

The handler is picklable (plain values, no open study), so it travels with the run request to
every process of a ``--nproc-per-node`` trial; only rank 0 talks to the study.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import ignite.distributed as idist
import optuna
from ignite.engine import Engine, Events
from optuna_integration import PyTorchIgnitePruningHandler

from fmtk.distributed import is_main_process
from fmtk.errors import FmtkError
from fmtk.runs import PRUNED
from fmtk.training.run import Run


@dataclass(frozen=True)
class Pruning:
    """How a study prunes: Optuna's median pruner once ``after`` trials have finished (a trial whose
    valid metric at an epoch is worse than the median of the finished trials' at that epoch
    stops), never in a trial's first ``warmup`` epochs (a warm-up or a slow start is not judged),
    or never (``enabled`` False: the metric is still reported, for the study's record)."""

    enabled: bool = True
    after: int = 5
    warmup: int = 0

    def __post_init__(self) -> None:
        for name, value in (("after", self.after), ("warmup", self.warmup)):
            if not isinstance(value, int) or value < 0:
                raise FmtkError(f"prune_{name}={value!r}: expected a whole number, 0 or more")

    def pruner(self) -> optuna.pruners.BasePruner:
        if not self.enabled:
            return optuna.pruners.NopPruner()
        # The steps reported are epochs, from 1; Optuna prunes from step == n_warmup_steps.
        return optuna.pruners.MedianPruner(n_startup_trials=self.after, n_warmup_steps=self.warmup + 1)


@dataclass(frozen=True)
class TrialReporting:
    """A run handler (``handlers=`` of a run request) for one trial: rank 0 reports ``metric`` after
    each validation through Optuna's ``PyTorchIgnitePruningHandler``; when that prunes, every
    process stops the run with :meth:`Run.stop` (its checkpoints are written and tested; a resume
    keeps the decision)."""

    storage: str  # the study's SQLAlchemy URL (sqlite:////…/study.db)
    study_name: str
    trial_id: int
    metric: str
    pruning: Pruning

    def __call__(self, run: Run) -> None:
        report, minimise = None, False
        if is_main_process():
            study = optuna.load_study(
                study_name=self.study_name, storage=self.storage, pruner=self.pruning.pruner()
            )
            minimise = study.direction == optuna.study.StudyDirection.MINIMIZE
            report = PyTorchIgnitePruningHandler(
                optuna.trial.Trial(study, self.trial_id), self.metric, run.trainer
            )

        @run.evaluator.on(Events.COMPLETED)
        def report_and_prune(evaluator: Engine) -> None:
            pruned = False
            if report is not None:
                try:
                    with warnings.catch_warnings():
                        # A resumed trial validates again the epoch it was killed in after reporting it:
                        # Optuna keeps the first value (the same: the run resumes exactly) and warns.
                        # (Optuna 4's text: "… because this `step=2` is already reported.")
                        warnings.filterwarnings("ignore", "The reported value is ignored because this")
                        report(evaluator)
                except optuna.TrialPruned:  # (a trial at its last epoch has finished: it is not pruned)
                    pruned = run.trainer.state.epoch < run.trainer.state.max_epochs
            if idist.get_world_size() > 1:  # rank 0 decides for all
                pruned = bool(idist.broadcast(int(pruned), src=0))
            if pruned:
                run.stop(PRUNED)

        @run.trainer.on(Events.TERMINATE)
        def say_why(trainer: Engine) -> None:  # after the epoch's line
            if run.stopped_by == PRUNED and is_main_process():
                # Optuna's median pruner judges a trial's best value so far (at this epoch, against the
                # finished trials' values at this epoch).
                epoch, values = trainer.state.epoch, [row[f"valid_{self.metric}"] for row in run.history]
                best = min(values) if minimise else max(values)
                run.echo(
                    f"pruned after epoch {epoch}: valid {self.metric} {best:.4f}, its best so far, is worse "
                    f"than the median of the finished trials at epoch {epoch}"
                )
