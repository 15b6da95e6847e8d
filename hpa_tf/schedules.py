"""Learning-rate schedules of the reference by 1-based epoch (spec 8.1)."""

from __future__ import annotations

import math

from hpa_tf.errors import ConfigError

# (last epoch, learning rate) steps; the last step's lr holds for any later epoch.
SCHEDULES: dict[str, tuple[tuple[int, float], ...]] = {
    "Adam55": ((25, 3e-4), (35, 1.5e-4), (45, 7.5e-5), (50, 3e-5), (55, 1e-5)),
    "Adam45": ((25, 3e-4), (30, 1.5e-4), (35, 7.5e-5), (40, 3e-5), (45, 1e-5)),
    "FaceAdam": ((50, 1e-4),),
}


def schedule_epochs(schedule: str) -> int:
    """The number of epochs the schedule was written for (55, 45, 50)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule][-1][0]


def learning_rate(schedule: str, epoch: int, epochs: int | None = None, scale: float = 1.0) -> float:
    """The learning rate of 1-based `epoch` under `schedule`, times `scale`. For a run of `epochs` other
    than the schedule's own length the steps are stretched to fit: epoch e reads ceil(e * own / epochs)."""
    own = schedule_epochs(schedule)
    if epoch < 1:
        raise ValueError(f"epochs are numbered from 1, got {epoch}")
    if epochs and epochs != own:
        epoch = math.ceil(epoch * own / epochs)
    steps = SCHEDULES[schedule]
    return scale * next((lr for last, lr in steps if epoch <= last), steps[-1][1])
