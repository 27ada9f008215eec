"""Every kind of bad input stops before any work, with a message that names what to fix."""

import socket
import subprocess
import sys

import pytest

from core.errors import WorkbenchError
from core.hydra_app import prepare, register_resolvers, validate
from tracking.mlflow_run import check_tracking_uri


@pytest.fixture(autouse=True)
def _resolvers():
    register_resolvers()


def _folders(tmp_path):
    return [f"paths.log_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}"]


@pytest.mark.parametrize("experiment", ["age_synthetic", "content_synthetic"])
def test_experiments_compose_with_the_smoke_debug(tmp_path, experiment):
    cfg = validate("train", [f"experiment={experiment}", "debug=smoke", *_folders(tmp_path)])
    assert cfg.trainer.max_epochs == 1
    assert cfg.data.generator.num_subjects == 150


def test_a_teams_own_config_folder_is_searched_and_defaults_follow_the_working_directory(tmp_path, monkeypatch):
    """An experiment kept outside the package (hydra.searchpath), and outputs under $CHILDSAFE_HOME, else the cwd."""
    (tmp_path / "team" / "experiment").mkdir(parents=True)
    (tmp_path / "team" / "experiment" / "team_age.yaml").write_text(
        "# @package _global_\ndefaults:\n  - age_synthetic\nseed: 7\n"
    )
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'team'}]"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHILDSAFE_HOME", raising=False)
    cfg = validate("train", [searchpath, "experiment=team_age", "debug=smoke"])
    assert cfg.seed == 7 and cfg.paths.log_dir == str(tmp_path / "outputs")
    assert cfg.paths.cache_dir == str(tmp_path / ".cache" / "datasets")
    monkeypatch.setenv("CHILDSAFE_HOME", str(tmp_path / "home"))
    assert validate("train", ["experiment=age_synthetic"]).paths.log_dir == str(tmp_path / "home" / "outputs")
    with pytest.raises(WorkbenchError, match="Could not find 'experiment/team_age'"):
        validate("train", ["experiment=team_age"])  # without the search path, the option is unknown


@pytest.mark.parametrize(
    ("experiment", "attributes"),
    [("age_synthetic", ["sex", "skin_tone_bin"]), ("content_synthetic", ["palette"]), ("age_utkface", ["sex", "race"])],
)
def test_each_data_config_names_its_own_fairness_slices(tmp_path, experiment, attributes):
    """Evaluate and export slice by the training data's attributes (evaluate.evaluation.slice_attributes=null)."""
    overrides = [f"experiment={experiment}", *_folders(tmp_path)]
    if experiment == "age_utkface":
        overrides.append(f"data.root={tmp_path}")
    assert list(validate("train", overrides).data.slice_attributes) == attributes
    assert validate("evaluate", _folders(tmp_path)).evaluation.slice_attributes is None


def test_typo_in_a_key_names_the_key_and_the_valid_keys(tmp_path):
    with pytest.raises(WorkbenchError) as error:
        validate("train", ["trainer.max_epochz=3", *_folders(tmp_path)])
    message = str(error.value)
    assert "trainer.max_epochz" in message
    assert "Did you mean trainer.max_epochs?" in message
    assert "min_epochs" in message  # the valid keys are listed


def test_unknown_group_option_lists_the_available_options(tmp_path):
    with pytest.raises(WorkbenchError) as error:
        validate("train", ["experiment=age_synthetc", *_folders(tmp_path)])
    assert "age_synthetc" in str(error.value)
    assert "age_synthetic" in str(error.value) and "content_synthetic" in str(error.value)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(WorkbenchError, match=r"trainer\.max_epochs' expects int"):
        validate("train", ["trainer.max_epochs=three", *_folders(tmp_path)])
    with pytest.raises(WorkbenchError, match=r"model\.optimizer\.lr' expects float"):
        validate("train", ["model.optimizer.lr=fast", *_folders(tmp_path)])
    validate("train", ["model.optimizer.lr=1", *_folders(tmp_path)])  # an int is a fine float


def test_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkbenchError, match=r"paths\.log_dir=.*a-file/out is not writable"):
        validate("train", [f"paths.log_dir={blocker / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}"])


def test_unreachable_tracking_server_is_detected_up_front():
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WorkbenchError, match=rf"http://127.0.0.1:{port} is not reachable"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout_s=2)


def test_unwritable_sqlite_store_is_detected_up_front(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(WorkbenchError, match="cannot be written"):
        check_tracking_uri(f"sqlite:///{blocker / 'mlflow.db'}")


def test_a_required_key_without_default_is_named(tmp_path):
    with pytest.raises(WorkbenchError, match=r"model_name must be given"):
        validate("promote", _folders(tmp_path))
    assert validate("promote", ["model_name=childsafe-age_synthetic", *_folders(tmp_path)]).model_name


def test_output_dir_override_becomes_the_run_folder(tmp_path):
    """lightning-hydra-template users set paths.output_dir; a real stage must then write there."""
    target = tmp_path / "runs" / "x"
    argv = ["experiment=age_synthetic", "debug=smoke", f"paths.output_dir={target}", *_folders(tmp_path)]
    assert f"hydra.run.dir={target}" in prepare("train", argv)[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.cli",
            "sync",
            f"root={tmp_path}",
            f"paths.output_dir={target}",
            *_folders(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (target / ".hydra" / "config.yaml").is_file()
    with pytest.raises(WorkbenchError, match=r"Give the output folder once"):
        prepare("train", [f"paths.output_dir={target}", f"hydra.run.dir={target}", *_folders(tmp_path)])


def test_a_mapping_given_as_a_dict_replaces_it(tmp_path):
    cfg = validate(
        "train",
        [
            "experiment=content_imagefolder",
            f"data.root={tmp_path}",
            "data.adapter.folder_classes={benign:safe,racy:suggestive,nsfw:explicit}",
            *_folders(tmp_path),
        ],
    )
    assert dict(cfg.data.adapter.folder_classes) == {"benign": "safe", "racy": "suggestive", "nsfw": "explicit"}


def test_a_typo_inside_a_dict_value_is_named_never_the_typed_key_itself(tmp_path):
    with pytest.raises(WorkbenchError) as error:
        validate("train", ["data.generator={num_subject:5}", *_folders(tmp_path)])
    assert "Did you mean data.generator.num_subjects?" in str(error.value)
    with pytest.raises(WorkbenchError) as error:
        validate("train", ["data.split_fractions={train:0.5,vals:0.5}", *_folders(tmp_path)])
    assert "Did you mean data.split_fractions.val?" in str(error.value)
    for typed in ("data.generator.num_subject", "data.split_fractions.vals"):
        assert f"Did you mean {typed}?" not in str(error.value)


def test_a_group_the_stage_lacks_names_the_stages_that_have_it(tmp_path):
    expected = r"calibrate stage has no config group 'debug'.*belongs to: bench, shard, train"
    with pytest.raises(WorkbenchError, match=expected):
        validate("calibrate", ["debug=smoke", *_folders(tmp_path)])


@pytest.mark.parametrize(
    ("stage", "override"),
    [
        ("export", "export.release_dir={blocker}/releases"),
        ("promote", "decision_file={blocker}/decision.json"),
        ("train", "paths.output_dir={blocker}/run"),
    ],
)
def test_every_output_location_is_checked_up_front(tmp_path, stage, override):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    extra = ["model_name=m"] if stage == "promote" else []
    with pytest.raises(WorkbenchError, match=r"is not writable \(.*a-file is a file, not a folder\)"):
        validate(stage, [override.format(blocker=blocker), *extra, *_folders(tmp_path)])


def test_sync_of_a_missing_root_is_an_error(tmp_path):
    from omegaconf import OmegaConf

    from tracking.sync import sync

    with pytest.raises(WorkbenchError, match=r"root=.*nowhere is not a folder"):
        sync(OmegaConf.create({"root": str(tmp_path / "nowhere")}))
    assert sync(OmegaConf.create({"root": str(tmp_path)})) == 0  # an existing folder without spools is fine
