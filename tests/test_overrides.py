"""Command-line overrides: unknown keys and values of the wrong type or range stop a workflow before it starts."""

import pytest
from bundle.cli import command_line_checks
from bundle.overrides import check_overrides, cli_overrides, override_problems
from bundle_runner import run_bundle
from conftest import REPO_ROOT
from monai.bundle import ConfigParser

TRAIN = ConfigParser()
TRAIN.read_config([str(REPO_ROOT / "configs" / "train.json"), str(REPO_ROOT / "configs" / "evaluate.json")])


def test_command_line_pairs_are_parsed_as_fire_parses_them():
    argv = [
        "--config_file",
        '["a.json", "b.json"]',
        "--learning_rate",
        "0.1",
        "--crop_size=256",
        "--resume",
        "False",
        "--tta",
        "--name",
        "x y",
    ]
    assert cli_overrides(argv) == {
        "config_file": ["a.json", "b.json"],
        "learning_rate": 0.1,
        "crop_size": 256,
        "resume": False,
        "tta": True,
        "name": "x y",
    }


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"lerning_rate": 0.1}, "--lerning_rate: not a key of this workflow's config; did you mean --learning_rate?"),
        (
            {"validate#splt": "x"},
            "--validate#splt: not a key of this workflow's config; did you mean --validate#split?",
        ),
        ({"crop_size": "abc"}, "--crop_size: expected an integer (the default is 768), got 'abc'"),
        ({"learning_rate": "fast"}, "--learning_rate: expected a number (the default is 0.0003), got 'fast'"),
        (
            {"resume": "false"},
            "--resume: expected True or False (the default is True), got 'false'"
            " (python-fire reads Python's spelling, also inside a dict)",
        ),
        ({"resume": "yes"}, "--resume: expected True or False (the default is True), got 'yes'"),
        ({"class_weights": 2}, "--class_weights: expected a list, e.g. [1, 2] (the default is [1.0, 1.0, 2.0]), got 2"),
        ({"label_fraction": 1.5}, "--label_fraction: must be in (0, 1], got 1.5"),
        ({"batch_size": 0}, "--batch_size: must be greater than 0, got 0"),
        ({"num_workers": -1}, "--num_workers: must be 0 or more, got -1"),
    ],
)
def test_each_bad_override_is_one_line(overrides, problem):
    assert override_problems(overrides, TRAIN) == [problem]


def test_good_overrides_pass():
    good = {
        "config_file": ["x"],
        "bundle_root": "/tmp/x",
        "learning_rate": 1,
        "crop_size": 256,
        "resume": False,
        "label_fraction": 0.1,
        "class_weights": [1, 1, 3],
        "validate#split": "test",
        "max_epochs": "$10 * 2",
        "tta": True,
        "init_weights": "w.pt",
    }
    assert override_problems(good, TRAIN) == []


def test_outside_the_bundle_runner_nothing_is_checked():
    command_line_checks(["pytest", "--lerning_rate", "0.1"])  # a workflow built in Python, or a test: no error
    with pytest.raises(SystemExit, match="lerning_rate"):
        check_overrides(["--config_file", str(REPO_ROOT / "configs" / "train.json"), "--lerning_rate", "0.1"])


def test_bundle_runner_stops_before_running_and_lists_every_problem(tmp_path):
    result = run_bundle(["pretrain.json"], tmp_path, bundle_root=str(tmp_path), lerning_rate=0.1, crop_size="abc")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "2 problem(s) with the command-line overrides; nothing was run:" in result.stderr
    assert "--lerning_rate: not a key of this workflow's config; did you mean --learning_rate?" in result.stderr
    assert "--crop_size: expected an integer (the default is 768), got 'abc'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "models").exists()


def test_help_lists_the_parameters_with_their_defaults_and_runs_nothing(tmp_path):
    result = run_bundle(["train.json"], tmp_path, bundle_root=str(tmp_path), help=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("Parameters of train.json") for line in lines)
    assert any(
        line.split()[:2] == ["--learning_rate", "0.0003"] and line.endswith("# peak learning rate") for line in lines
    )
    assert any(line.split()[:2] == ["--resume", "True"] for line in lines)  # Python spelling, as the CLI reads it back
    assert not (tmp_path / "models").exists()
