import pytest

from vital_fv.errors import VitalError
from vital_fv.zoo import read_state_dict


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(VitalError, match="cannot read weights file .*junk.pth"):
        read_state_dict(path)
    with pytest.raises(VitalError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
