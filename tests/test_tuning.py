import json

import numpy as np
import pytest
import torch
from bundle.data import DataFileError
from bundle.postprocess import stored_settings
from bundle.tuning import ThresholdTuner, mean_aji, search_thresholds
from ignite.engine import Engine

BASE = {"body_threshold": 0.5, "foreground_threshold": 0.5, "min_marker_area": 4, "min_nucleus_area": 4}
GRID = {"body_threshold": [0.3, 0.5, 0.7], "foreground_threshold": [0.3, 0.5]}


def faint_sample() -> tuple[np.ndarray, np.ndarray]:
    """Two separate square nuclei whose body probability is only 0.4: the default 0.5 finds none."""
    label = np.zeros((40, 40), np.int64)
    label[5:15, 5:15], label[22:34, 20:32] = 1, 2
    body = np.where(label > 0, 0.4, 0.05)
    prob = np.stack([1 - body - 0.05, body, np.full_like(body, 0.05)]).astype(np.float32)
    return prob, label


def test_the_search_finds_thresholds_that_recover_faint_nuclei():
    samples = [faint_sample()] * 2
    chosen = search_thresholds(samples, BASE, GRID)
    assert chosen["body_threshold"] == 0.3
    assert chosen["min_marker_area"] == 4 and chosen["min_nucleus_area"] == 4  # the rest of base is kept
    assert chosen["chosen_by"]["score"] == pytest.approx(1.0)
    assert chosen["chosen_by"]["score_of_defaults"] == pytest.approx(0.0) == mean_aji(samples, BASE)
    assert chosen["chosen_by"]["tiles"] == 2 and len(chosen["chosen_by"]["trials"]) == 6


def test_ties_keep_the_first_combination_and_empty_input_is_refused():
    chosen = search_thresholds([faint_sample()], BASE, {"foreground_threshold": [0.2, 0.3], "body_threshold": [0.3]})
    assert chosen["foreground_threshold"] == 0.2
    with pytest.raises(ValueError, match="no validation tiles"):
        search_thresholds([], BASE, GRID)
    with pytest.raises(ValueError, match="at least one value"):
        search_thresholds([faint_sample()], BASE, {"body_threshold": []})


def test_the_tuner_collects_an_evaluation_and_writes_settings_that_stored_settings_reads(tmp_path):
    prob, label = faint_sample()
    path = tmp_path / "models" / "model.postprocess.json"
    tuner = ThresholdTuner(path, BASE, GRID)
    batches = [[{"label": torch.as_tensor(label[None])}]] * 3

    def step(engine, batch):
        engine.state.batch = batch
        return [{"pred": torch.as_tensor(prob)}]

    engine = Engine(step)
    tuner.attach(engine)
    engine.run(batches)
    written = json.loads(path.read_text())
    assert written["chosen_by"]["tiles"] == 3
    assert stored_settings(path) == {
        **BASE,
        "body_threshold": 0.3,
        "foreground_threshold": written["foreground_threshold"],
    }


def test_stored_settings_are_empty_without_a_file(tmp_path):
    assert stored_settings(tmp_path / "absent.json") == {}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a readable JSON file"),
        ("[0.5]", "expected a JSON object"),
        ('{"body_threshold": 1.5}', "body_threshold must be a number in \\[0, 1\\)"),
        ('{"foreground_threshold": "high"}', "foreground_threshold must be a number"),
        ('{"min_nucleus_area": -3}', "min_nucleus_area must be a number of pixels >= 0"),
        ('{"min_marker_area": true}', "min_marker_area must be"),
    ],
)
def test_a_bad_settings_file_is_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "model.postprocess.json"
    path.write_text(content)
    with pytest.raises(DataFileError, match=message) as error:
        stored_settings(path)
    assert str(path) in str(error.value)
