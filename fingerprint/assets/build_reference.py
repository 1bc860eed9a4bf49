"""Build the reference head shipped in this folder (run once by a developer; needs nilearn, a dev dependency).

    .venv/bin/python -m fingerprint.assets.build_reference

Why these files: the slice pipeline aligns every series rigidly to one reference brain and cuts the slice at a fixed
level of that reference, so the reference decides the anatomy every fingerprint sees. We use nilearn's copy of the
ICBM 2009a symmetric MNI152 T1 template (brain-extracted, as nilearn ships it) and its brain mask, both at 2 mm:
2 mm is plenty for a 6-dof alignment and keeps the package small (two ~100 kB files), and at run time only
SimpleITK reads them. The template is symmetric, so left/right cannot bias the alignment.

Outputs (NIfTI, MNI coordinates, read by SimpleITK in LPS):
- ``reference_t1_2mm.nii.gz``: the template rescaled to uint8 0..255.
- ``reference_brain_mask_2mm.nii.gz``: the brain mask (uint8 0/1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
T1_FILE = HERE / "reference_t1_2mm.nii.gz"
MASK_FILE = HERE / "reference_brain_mask_2mm.nii.gz"


def build(out_dir: Path = HERE) -> tuple[Path, Path]:
    """Write the two reference files into ``out_dir`` and return their paths."""
    import nibabel as nib
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    data = np.asarray(template.get_fdata(), dtype=np.float32)
    data = np.clip(255.0 * data / np.percentile(data[data > 0], 99.9), 0, 255).astype(np.uint8)
    t1 = nib.Nifti1Image(data, template.affine)
    brain = nib.Nifti1Image((np.asarray(mask.get_fdata()) > 0.5).astype(np.uint8), mask.affine)
    for image in (t1, brain):
        image.header.set_qform(image.affine, code=4)  # 4 = MNI152
        image.header.set_sform(image.affine, code=4)
    out_dir.mkdir(parents=True, exist_ok=True)
    t1_path, mask_path = out_dir / T1_FILE.name, out_dir / MASK_FILE.name
    nib.save(t1, t1_path)
    nib.save(brain, mask_path)
    return t1_path, mask_path


if __name__ == "__main__":
    for path in build():
        print(f"wrote {path} ({path.stat().st_size} bytes)")
