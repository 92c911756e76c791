"""netcore.process.write_private_json: mode 0600, whole or not at all."""

import json
import os
import stat

import pytest

from netcore.process import write_private_json


def test_written_whole_for_this_user_only(tmp_path):
    path = str(tmp_path / "tokens.json")
    write_private_json(path, {"a": 1})
    os.chmod(path, 0o644)  # replaced, not rewritten: the new file is 0600 again
    write_private_json(path, {"a": [2, "x"]})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert json.load(f) == {"a": [2, "x"]}
    assert os.listdir(tmp_path) == ["tokens.json"], "no temporary file left"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "state.json")
    write_private_json(path, [1])
    with pytest.raises(TypeError):
        write_private_json(path, [object()])  # not JSON
    with open(path) as f:
        assert json.load(f) == [1]
    assert os.listdir(tmp_path) == ["state.json"], "the temporary file is removed"
