"""Scalars logged to TensorBoard by the workflows, read back for reports."""

from pathlib import Path


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` (by step) of every event file under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # slow import, only here

    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return {tag: sorted(points) for tag, points in series.items()}


def tail_means(series: dict[str, list[tuple[int, float]]], fraction: float = 0.25) -> dict[str, float]:
    """Mean of each tag over its last ``fraction`` of points (at least one): where a run ended up."""
    means = {}
    for tag, points in series.items():
        tail = points[-max(1, round(fraction * len(points))) :]
        means[tag] = sum(value for _, value in tail) / len(tail)
    return means
