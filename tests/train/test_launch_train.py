
from tests.scripts import load_script

from .conftest import TRAIN_SCRIPT


def load_launcher():
    return load_script(TRAIN_SCRIPT, "launch_train")


def test_launch_train_exits_2_and_names_the_key_on_a_bad_override(capsys):
    assert load_launcher().main(["train.stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err



def test_launch_train_takes_overrides_before_and_after_the_stage_option(capsys):
    # The second override stands after `--stage seg`; it is parsed as an override (its bad key is named), not
    # rejected by argparse as an unrecognized argument.
    assert load_launcher().main(["train.steps=1", "--stage", "seg", "seg.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "stepz" in err and "unrecognized" not in err
