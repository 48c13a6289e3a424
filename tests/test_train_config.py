"""TrainConfig: defaults < TOML < flags; clear errors for bad values and unknown keys."""

from __future__ import annotations

import pytest

from tacegen.train.config import TrainConfig, parse_duration


def test_flags_win_over_the_file_and_the_file_over_defaults(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('train = "a.xyz"\nchannels = 16\nlr = 0.005\n[data]\nbatch-size = 7\n')
    config = TrainConfig.from_sources(str(path), channels=32, lr=None)
    assert (config.channels, config.lr, config.batch_size, config.layers) == (32, 0.005, 7, 2)
    written = tmp_path / "out.toml"
    written.write_text(config.to_toml())
    assert TrainConfig.from_sources(str(written)).to_dict() == config.to_dict()


@pytest.mark.parametrize("changes, message", [
    (dict(channels=0), "channels must be an integer >= 1, got 0"),
    (dict(lr=-1.0), "lr must be a finite number > 0.0"),
    (dict(scheduler="step"), "scheduler must be one of"),
    (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
    (dict(resume=True, force=True), "--resume and --force exclude each other"),
    (dict(max_time="ten minutes"), "max_time must be seconds or a duration"),
])
def test_bad_values_name_the_option(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_sources(train="a.xyz", **changes)


def test_unknown_toml_key_and_missing_training_data(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('train = "a.xyz"\nchanels = 16\n')
    with pytest.raises(ValueError, match=r"run\.toml: unknown key 'chanels'"):
        TrainConfig.from_sources(str(path))
    with pytest.raises(ValueError, match="no training data"):
        TrainConfig.from_sources()
    assert parse_duration("2h") == 7200 and parse_duration("90s") == 90 and parse_duration("45m") == 2700
