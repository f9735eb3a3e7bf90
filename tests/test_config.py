"""The Hydra config: every file composes, and mistakes fail naming what is valid."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from pipeline.choices import Amp
from pipeline.cli import check_command_line, check_override_keys
from pipeline.config import CONF_DIR, Config, schema_keys
from pipeline.errors import UserError
from pipeline.resolve import request

REQUIRED = {  # values for the ??? fields of groups that have them
    "imagefolder": ["dataset.path=/data/val"],
    "parquet": ["dataset.data_files=/data/*.parquet"],
    "disk": ["dataset.path=/data/saved"],
    "imagenet-c": ["dataset.path=/data/imagenet-c", "dataset.corruption=fog/3"],
}


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml")))
def test_every_dataset_config_composes(config, name):
    """Each file in conf/dataset/ composes into the typed schema."""
    cfg = config(f"dataset={name}", *REQUIRED.get(name, []))
    assert isinstance(cfg, Config) and cfg.dataset.path


def test_defaults_are_the_documented_ones(config):
    """The defaults: the bundled sample, AlexNet's pretrained weights (torchvision's DEFAULT:
    IMAGENET1K_V1, test_model pins it), auto amp, pil backend."""
    cfg = config()
    assert cfg.dataset.path == "parquet" and cfg.dataset.data_files.endswith("sample.parquet")
    assert (cfg.model.arch, cfg.model.weights) == ("alexnet", "pretrained")
    assert cfg.amp is Amp.auto and cfg.limit is None


def test_mistyped_key_names_the_valid_keys():
    """A key the schema lacks fails with a did-you-mean and the keys of its group (the top
    level's and the groups' names for a top-level key), not all 45 in one line."""
    with pytest.raises(UserError, match=r"'batchsize'.*Did you mean 'batch_size'\? Keys: ") as e:
        check_override_keys(["batchsize=3"])
    assert "dataset.*, metrics.*, model.*" in str(e.value) and "dataset.path" not in str(e.value)
    with pytest.raises(
        UserError, match=r"'datset.splt'.*'dataset.split'\? Keys of dataset: path,"
    ) as e:
        check_override_keys(["datset.splt=x"])
    assert "batch_size" not in str(e.value) and len(str(e.value)) < 400
    check_override_keys(["batch_size=3", "dataset=imagenet-val", "dataset.split=x", "~limit"])
    assert "dataset.image_column" in schema_keys() and "metrics.real_labels" in schema_keys()


def test_presets_on_hydras_searchpath_are_options(tmp_path):
    """A user's own dataset presets, added with hydra.searchpath, are valid options (and
    compose); a mistyped one names them among the valid."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "mine.yaml").write_text("path: parquet\ndata_files: x.parquet\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    check_command_line(["-m", search, "dataset=mine,sample", "hydra.sweep.dir=/tmp/s"])
    with pytest.raises(UserError, match=r"dataset=mien is not.*Did you mean 'mine'.*mine, "):
        check_override_keys([search, "dataset=mien"])
    with pytest.raises(UserError, match="dataset=mine is not a config of dataset/"):
        check_override_keys(["dataset=mine"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--config-dir=/tmp/conf", "batch_size=3"],
        ["-cd", "/tmp/conf", "-cn", "other", "batch_size=3"],
        ["--config-name", "other", "-m", "amp=off,bf16"],
        ["--multirun", "hydra/launcher=slurm", "dataset=imagenet-r"],
    ],
)
def test_hydras_own_flags_are_not_taken_for_keys(argv):
    """Hydra's flags (-cd X, --config-dir=X, -cn, -m) pass; only the overrides are checked."""
    check_override_keys(argv)
    with pytest.raises(UserError, match="Unknown config key 'nope'"):
        check_override_keys([*argv, "nope=1"])


def test_output_dir_in_a_sweep_is_refused():
    """A sweep writes a folder per job; one output_dir for all of them is refused."""
    with pytest.raises(UserError, match=r"set hydra.sweep.dir=DIR instead"):
        check_command_line(["-m", "batch_size=2,4", "output_dir=/tmp/x"])
    check_command_line(["output_dir=/tmp/x", "--cfg", "job"])


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every `python -m pipeline ...` (and `torchrun ... -m pipeline ...`) line of the
    README and docs/, split as bash would split it: (where, its arguments)."""
    import re
    import shlex

    root = CONF_DIR.parent
    found = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = page.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip().split("  #")[0].strip()
            match = re.match(r"(?:torchrun .*?-m pipeline|python -m pipeline)( .*)?$", line)
            if match and not line.startswith("python -m pipeline."):
                found.append((f"{page.name}: {line}", shlex.split(match[1] or "")))
    return found


def test_every_documented_command_passes_the_command_line_check(tmp_path, monkeypatch):
    """Each command of the README and docs/, pasted into bash (quoting included:
    validation[:1000] must reach Hydra quoted), passes the whole up-front check: keys,
    options, every job's values, extras and folders. No example can rot."""
    commands = documented_commands()
    assert len(commands) >= 35
    monkeypatch.chdir(tmp_path)  # relative output folders land here
    for where, argv in commands:
        try:
            check_command_line(argv)
        except UserError as e:
            pytest.fail(f"{where}\n  refused: {e}")


def test_split_slices_need_hydra_quotes(config):
    """What the README's slice example must look like: quoted for Hydra inside bash quotes."""
    import shlex

    from hydra.errors import OverrideParseException

    cfg = config(*shlex.split(""""dataset.split='validation[:1000]'" """))
    assert cfg.dataset.split == "validation[:1000]"
    with pytest.raises(OverrideParseException):
        config(*shlex.split("dataset.split='validation[:1000]'"))


def test_wrong_type_fails_at_compose(config):
    """A value of the wrong type is refused when the config is composed."""
    with pytest.raises(ConfigCompositionException) as e:
        config("batch_size=many")
    assert isinstance(e.value.__cause__, ValidationError)


def test_closed_choices_list_their_values(config):
    """amp takes one of a closed set, and the error lists it."""
    with pytest.raises(ConfigCompositionException) as e:
        config("amp=fp8")
    assert "auto, off, fp16, bf16" in str(e.value.__cause__)


@pytest.mark.parametrize(
    ("override", "message"),
    [("batch_size=0", "batch_size=0; it must be 1 or more"), ("limit=-5", "limit=-5")],
)
def test_values_out_of_range_are_refused(config, override, message):
    """A batch size below 1 or a negative limit fails with one line naming the key."""
    with pytest.raises(UserError, match=message):
        request(config(override))


def test_restrict_is_true_false_or_auto(config):
    """dataset.restrict is true, false or null (auto, the default: only a known protocol's
    subset restricts); anything else is one line."""
    assert config().dataset.restrict is None
    assert config("dataset.restrict=false").dataset.restrict is False
    assert config("dataset.restrict=true").dataset.restrict is True
    with pytest.raises(UserError, match=r"dataset.restrict=maybe; it must be true or false \(or"):
        check_command_line(["dataset.restrict=maybe"])


def test_the_slurm_launcher_without_its_extra_is_one_line(monkeypatch):
    """hydra/launcher=slurm where hydra_plugins itself is missing (find_spec of its submodule
    raises there, rather than answering None) is the one line naming the extra."""
    import sys

    for name in [m for m in sys.modules if m.startswith("hydra_plugins.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hydra_plugins", None)  # as if never installed
    with pytest.raises(UserError, match=r"needs hydra-submitit-launcher: pip install 'alex"):
        check_override_keys(["hydra/launcher=slurm"])


def test_a_hydra_flag_after_the_overrides_is_one_line():
    """Hydra's flags go before the key=value overrides: overrides on both sides of a flag
    are one line saying so, not argparse's usage text."""
    with pytest.raises(UserError, match=r"Unrecognized arguments: limit=3 \(Hydra's flags"):
        check_command_line(["batch_size=2", "-cd", "/x", "limit=3"])
