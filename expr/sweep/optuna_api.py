"""Every use of Optuna's private API, in one place (tested against the pinned Optuna in tests/test_sweeps.py).

A worker claims a queued trial by the storage's compare-and-set state transition, which Optuna exposes only on the
storage object; a queued trial's fixed values and a retried trial's origin live in its system attributes. Public
Optuna has no way to do these; if a new Optuna moves them, this module is the one to change.
"""

from __future__ import annotations

from typing import Any


def trial_id(trial) -> int:
    """The storage id of a ``Trial`` or ``FrozenTrial`` (not its number)."""
    return trial._trial_id


def stored_trial(study, trial):
    """The storage's current ``FrozenTrial`` for ``trial``."""
    return study._storage.get_trial(trial._trial_id)


def system_attrs(trial) -> dict[str, Any]:
    """A live trial's system attributes as stored (``fixed_params`` of a queued trial, ``failed_trial`` of a retry)."""
    return trial.study._storage.get_trial(trial._trial_id).system_attrs


def try_set_state(study, trial, state) -> bool:
    """Move ``trial`` to ``state`` if the storage allows it from its current state: True for exactly one of several
    workers racing to claim the same queued trial."""
    return bool(study._storage.set_trial_state_values(trial._trial_id, state))


def live_trial(study, frozen):
    """A ``Trial`` (to suggest, report and tell) for a claimed ``FrozenTrial``."""
    import optuna

    return optuna.trial.Trial(study, frozen._trial_id)
