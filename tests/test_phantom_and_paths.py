"""Phantom determinism and geometry, data-root defaults, --help."""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.boxes import Geometry, boxes_from_label_map
from autoorgan.dataset.phantom import LABELS, make_case


def test_phantom_is_deterministic_per_seed():
    a_img, a_seg, _ = make_case(3, 5, spacing_scale=1.6)
    b_img, b_seg, _ = make_case(3, 5, spacing_scale=1.6)
    c_img, _, _ = make_case(4, 5, spacing_scale=1.6)
    assert np.array_equal(sitk.GetArrayFromImage(a_img), sitk.GetArrayFromImage(b_img))
    assert np.array_equal(sitk.GetArrayFromImage(a_seg), sitk.GetArrayFromImage(b_seg))
    assert a_img.GetSize() != c_img.GetSize() or not np.array_equal(sitk.GetArrayFromImage(a_img),
                                                                    sitk.GetArrayFromImage(c_img))


def test_phantom_organs_sit_where_the_world_says():
    """Liver on the patient's right (LPS x < 0), spleen left, kidneys posterior, bladder inferior, whatever the
    direction matrix: checks labels, geometry and the box convention together."""
    directions = set()
    for i in range(12):
        img, seg, info = make_case(0, i, spacing_scale=1.6)
        directions.add(info["direction"])
        geo = Geometry.from_sitk(img)
        centres = {}
        for label, box in boxes_from_label_map(sitk.GetArrayFromImage(seg)).items():
            centres[label] = geo.edge_to_world((np.array(box[:3]) + np.array(box[3:])) / 2)
        if 1 in centres and 2 in centres:
            assert centres[1][0] < centres[2][0]  # liver right (smaller x) of spleen
        if 3 in centres and 5 in centres:
            assert centres[3][1] > centres[5][1]  # kidney posterior to stomach
        if 6 in centres and 1 in centres:
            assert centres[6][2] < centres[1][2] - 100  # bladder well below the liver
        assert info["missing"] is None or LABELS[info["missing"]] not in centres
    assert {"identity", "permuted"} <= directions or len(directions) >= 3


def test_default_roots_are_announced_once(tmp_path):
    code = ("import os\n"
            "for k in ('raw','preprocessed','results'): os.environ.pop('autoorgan_'+k, None)\n"
            f"os.environ['HOME'] = {str(tmp_path)!r}\n"
            "from autoorgan.utils import paths\n"
            "print(paths.raw_root()); print(paths.raw_root())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                         errors="replace")
    assert res.stdout.split() == [str(tmp_path / "autoorgan_data" / "raw")] * 2
    assert res.stderr.count("autoorgan_raw is not set") == 1


@pytest.mark.parametrize("script", ["autoorgan_plan_and_preprocess", "autoorgan_make_phantom_dataset",
                                    "autoorgan_convert_MSD_dataset", "autoorgan_convert_contoured_json",
                                    "autoorgan_demo", "autoorgan_preprocess"])
def test_help_explains(script):
    from pathlib import Path
    exe = Path(sys.executable).with_name(script)
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert res.returncode == 0 and "usage:" in res.stdout and len(res.stdout) > 300


def test_phantom_cli_refuses_to_overwrite(roots):
    from conftest import run_cli
    args = ("-d", "950", "--cases", "2", "--test_cases", "0", "--spacing_scale", "2", "--quiet")
    assert run_cli("autoorgan_make_phantom_dataset", *args).returncode == 0
    res = run_cli("autoorgan_make_phantom_dataset", *args)
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr
    ds = json.loads((roots["raw"] / "Dataset950_Phantom" / "dataset.json").read_text())
    assert ds["numTraining"] == 2
