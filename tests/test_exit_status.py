"""``loupe pretrain``'s exit status follows the error's type, never its wording: divergence 1, a
``LoupeError`` (bad setting, data, checkpoint) 2, anything else (a programming error) surfaces."""
import argparse

import pytest

import loupe_core.commands.pretrain as command
from loupe_core.errors import CheckpointError, ConfigError, DataError, DivergenceError


def _args(**overrides):
    base = dict(config="tiny", out=None, resume=None, stop_at=None, print_config=False, list_configs=False,
                overrides=[])
    return argparse.Namespace(**{**base, **overrides})


def _run_raising(monkeypatch, exc):
    def pretrain(*args, **kwargs):
        raise exc

    import loupe_core.pipeline as pipeline  # the command imports it when it runs

    monkeypatch.setattr(pipeline, "resolve_run", lambda *a: (None, "run", None))
    monkeypatch.setattr(pipeline, "pretrain", pretrain)
    return command.run_pretrain_command(_args())


@pytest.mark.parametrize("exc, status", [(DivergenceError("non-finite loss at step 3"), 1),
                                         (ConfigError("train.lr must be > 0"), 2),
                                         (DataError("shard 'a.tar' unreadable"), 2),
                                         (CheckpointError("checkpoint 'x.pt' is damaged"), 2)])
def test_loupe_errors_map_to_their_exit_status(monkeypatch, capsys, exc, status):
    assert _run_raising(monkeypatch, exc) == status
    assert str(exc) in capsys.readouterr().err


@pytest.mark.parametrize("exc", [ValueError("x contains NaN values"), RuntimeError("non-finite"), KeyError("k")])
def test_other_errors_of_the_run_surface_as_programming_errors(monkeypatch, exc):
    with pytest.raises(type(exc)):
        _run_raising(monkeypatch, exc)


def test_a_bad_argument_is_exit_2_naming_it(capsys):
    assert command.run_pretrain_command(_args(overrides=["train.stepz=3"])) == 2
    assert "train.stepz" in capsys.readouterr().err


def test_a_setting_checked_during_the_run_is_exit_2_naming_it(tmp_path, capsys):
    """The sampler's check (a batch larger than the training set) runs inside ``pretrain``: a
    ``ConfigError``, so exit 2 with its message, not a traceback."""
    args = _args(out=str(tmp_path / "run"), overrides=["data.train_size=4", "train.batch_size=8"])
    assert command.run_pretrain_command(args) == 2
    assert "train.batch_size=8 exceeds the training set (4 pairs)" in capsys.readouterr().err


def _bad_setting():
    from loupe_core.config import load_config

    load_config("tiny", ["loss.token_source=exhaustive"])


def _bad_post_init():
    from loupe_core.config import load_config

    load_config("tiny", ["loss.unsil=false"])  # tiny (as paper) has hybrid levels: they need UNSIL


def _unusable_records():
    from loupe_core.data.stats import BadRunGuard, DataStats

    guard = BadRunGuard(DataStats(), limit=2)
    guard.skipped("a.tar")
    guard.skipped("a.tar")


def _no_shard():
    from loupe_core.data.webdataset_loader import expand_shards

    expand_shards([])


@pytest.mark.parametrize("raise_it, error", [(_bad_setting, ConfigError), (_bad_post_init, ConfigError),
                                             (_unusable_records, DataError), (_no_shard, DataError)])
def test_user_errors_of_config_and_data_are_typed(raise_it, error):
    with pytest.raises(error):
        raise_it()
