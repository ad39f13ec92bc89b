"""read_image on real files (pydicom-data), on files written here with pydicom / nibabel / Pillow, and on
broken ones."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from embedx.data.images import NiftiSelection, read_image
from embedx.data.preprocess import PreprocessConfig, preprocess
from embedx.errors import ImageReadError


def _real(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"{name} not found: is pydicom-data installed?"
    return str(path)


def _corner_and_centre(img: np.ndarray) -> tuple[float, float]:
    h, w = img.shape
    corner = float(img[: h // 20, : w // 20].mean())
    centre = float(img[h // 3 : 2 * h // 3, w // 2 - w // 20 : w // 2 + w // 20].mean())
    return corner, centre


# ---------------------------------------------------------------- real files shipped in pydicom-data


def test_real_philips_cr_monochrome1_is_shown_bright_body_dark_air(artifacts_dir):
    """RG1: Philips chest CR stored MONOCHROME1. After inversion the air above the shoulders (top-left
    corner) must be dark and the mediastinum (centre column) bright, as on a light box."""
    path = _real("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert ds.Manufacturer.startswith("Philips")
    img = read_image(path)
    assert img.dtype == np.float32 and img.shape == (ds.Rows, ds.Columns)
    assert np.isfinite(img).all() and img.std() > 0
    corner, centre = _corner_and_centre(img)
    assert corner < centre - 0.2 * (img.max() - img.min())
    # Without the inversion the same check fails: the raw stored values have the opposite polarity.
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    raw_corner, raw_centre = _corner_and_centre(raw)
    assert raw_corner > raw_centre

    shown = preprocess(img, PreprocessConfig(size=512))[0]
    Image.fromarray(((shown + 1) * 127.5).round().astype(np.uint8)).save(artifacts_dir / "cr_philips_RG1.png")


def test_real_jpeg2000_lossless_cr_decodes_to_the_uncompressed_pixels():
    """The lossless JPEG 2000 copy of the Philips CR reads back bit-identical to the uncompressed one."""
    assert pydicom.dcmread(_real("RG1_J2KR.dcm"), stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        "1.2.840.10008.1.2.4.90"
    )
    np.testing.assert_array_equal(read_image(_real("RG1_J2KR.dcm")), read_image(_real("RG1_UNCR.dcm")))


def test_real_fujifilm_cr_monochrome1_bone_bright(artifacts_dir):
    """RG3: Fujifilm leg CR, MONOCHROME1. The tibia runs down the middle columns; after inversion the
    shaft is brighter than the soft tissue/air strip beside it."""
    path = _real("RG3_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.Manufacturer.startswith("FUJI") and ds.PhotometricInterpretation == "MONOCHROME1"
    img = read_image(path)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    # Inversion is a mirror: the brightest raw pixel becomes (one of) the darkest, and vice versa.
    assert np.corrcoef(img.ravel()[::97], raw.ravel()[::97])[0, 1] < -0.99
    lossy = read_image(_real("RG3_J2KI.dcm"))
    assert lossy.shape == img.shape and np.corrcoef(lossy.ravel()[::97], img.ravel()[::97])[0, 1] > 0.98


@pytest.mark.parametrize(
    ("name", "modality"),
    [("MR2_UNCR.dcm", "MR"), ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR"), ("CT_small.dcm", "CT")],
)
def test_real_mr_and_ct_load_sane(name, modality):
    path = _real(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.Modality == modality
    img = read_image(path)
    assert img.ndim == 2 and img.shape == (ds.Rows, ds.Columns)
    assert np.isfinite(img).all() and np.unique(img).size > 50


def test_real_ct_is_in_hounsfield_units():
    """CT_small: stored values 128..2191 with intercept -1024 -> air/fat below zero, bone well above."""
    path = _real("CT_small.dcm")
    img = read_image(path)
    raw = pydicom.dcmread(path).pixel_array
    np.testing.assert_allclose(img, raw.astype(np.float32) - 1024)
    assert img.min() < -500 and img.max() > 500


def test_real_philips_mr_rescale_slope_applied():
    path = _real("MR2_UNCR.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path, header_window=False)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(img, expected, rtol=1e-5)


def test_real_head_ct_header_window_applied():
    """693_UNCR: head CT with window 40/100 in its header: values are clipped to [-10, 90] HU."""
    img = read_image(_real("693_UNCR.dcm"))
    assert img.min() == pytest.approx(-10) and img.max() == pytest.approx(90)
    wide = read_image(_real("693_UNCR.dcm"), window=(40, 400))
    assert wide.min() == pytest.approx(-160) and wide.max() == pytest.approx(240)


def test_real_multiframe_mr_takes_middle_frame():
    path = _real("emri_small.dcm")
    frames = pydicom.dcmread(path).pixel_array
    assert frames.ndim == 3 and frames.shape[0] == 10
    np.testing.assert_array_equal(read_image(path), frames[5].astype(np.float32))


def test_real_unsupported_transfer_syntax_names_it_and_the_decoder():
    from pydicom.pixels.decoders.base import get_decoder

    path = _real("JPEG-LL.dcm")
    uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if get_decoder(uid).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "JPEG Lossless" in info.value.reason and "pylibjpeg" in info.value.reason
    assert info.value.path == path


def test_real_truncated_dicom_is_an_image_read_error():
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(_real("MR_truncated.dcm"))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("GDCMJ2K_TextGBR.dcm", "corrupt JPEG 2000"),  # a decoder is there but the stream is broken
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "no pixel data"),
        ("rtplan.dcm", "no pixel data (Modality RTPLAN"),
        ("reportsi.dcm", "no pixel data (Modality SR"),
    ],
)
def test_real_malformed_and_non_image_dicom_are_image_read_errors(name, reason):
    with pytest.raises(ImageReadError) as info:
        read_image(_real(name))
    assert reason in info.value.reason


# ---------------------------------------------------------------- DICOM written here with pydicom


def test_written_dicom_rescale_and_header_window(tmp_path, dicom_writer):
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = dicom_writer(tmp_path / "ct.dcm", pixels, slope=2.0, intercept=-1000.0, window=(1000.0, 2000.0))
    img = read_image(path)
    expected = np.clip(pixels.astype(np.float32) * 2 - 1000, 0, 2000)
    np.testing.assert_allclose(img, expected)
    assert img.min() == 0 and img.max() == 2000  # the header window clipped both ends
    # An explicit window wins over the header's; header_window=False gives modality units unclipped.
    np.testing.assert_allclose(read_image(path, window=(0, 100)), np.clip(pixels * 2.0 - 1000, -50, 50))
    np.testing.assert_allclose(read_image(path, header_window=False), pixels * 2.0 - 1000)


def test_written_dicom_monochrome1_inverted(tmp_path, dicom_writer):
    pixels = np.zeros((32, 32), dtype=np.uint16)
    pixels[8:24, 8:24] = 1000  # stored high = displayed dark in MONOCHROME1
    mono1 = read_image(dicom_writer(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    mono2 = read_image(dicom_writer(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2"))
    assert mono1[16, 16] < mono1[0, 0] and mono2[16, 16] > mono2[0, 0]
    np.testing.assert_allclose(mono1, 1000 - mono2)


def test_written_dicom_multiframe_middle_frame(tmp_path, dicom_writer):
    frames = np.stack([np.full((16, 16), 10 * k, dtype=np.uint16) for k in range(5)])
    frames[:, 0, 0] = 1  # not constant
    img = read_image(dicom_writer(tmp_path / "mf.dcm", frames))
    assert img.shape == (16, 16) and img[5, 5] == 20


def test_dicom_without_pixel_data(tmp_path, dicom_writer):
    path = dicom_writer(tmp_path / "sr.dcm", None, modality="SR")
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(path)


def test_truncated_written_dicom(tmp_path, dicom_writer):
    path = dicom_writer(tmp_path / "t.dcm", np.ones((64, 64), dtype=np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_dicom_without_preamble_and_a_file_that_is_not_dicom(tmp_path):
    """Old implicit-VR files without the 'DICM' preamble still read; random bytes named .dcm do not."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Modality = "CT"
    ds.set_pixel_data(np.arange(64, dtype=np.uint16).reshape(8, 8), "MONOCHROME2", 16)
    del ds.file_meta
    ds.save_as(tmp_path / "old.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "old.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(tmp_path / "old.dcm")[0], np.arange(8))
    (tmp_path / "junk.dcm").write_bytes(b"not an image " * 40)
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        read_image(tmp_path / "junk.dcm")


# ---------------------------------------------------------------- NIfTI written with nibabel


def _volume(tmp_path, affine=None, depth=9):
    """Axial slice k holds the value 100 + k; a marker sits at patient right-anterior of every slice."""
    import nibabel as nib

    data = np.zeros((12, 10, depth), dtype=np.float32)
    for k in range(depth):
        data[..., k] = 100 + k
    data[-2:, -2:, :] = 500  # RAS: high x = patient right, high y = anterior
    if affine is None:
        affine = np.eye(4)
    else:  # store the same anatomy in the flipped array order the affine describes
        if affine[0, 0] < 0:
            data = data[::-1]
        if affine[1, 1] < 0:
            data = data[:, ::-1]
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
    return path


def test_nifti_center_slice_and_radiological_orientation(tmp_path):
    img = read_image(_volume(tmp_path))
    assert img.shape == (10, 12)  # rows = A-P, columns = R-L
    assert img[5, 5] == 104  # middle of 9 slices
    assert img[0, 0] == 500 and img[-1, -1] == 104  # right-anterior marker at the top-left


def test_nifti_orientation_follows_the_affine(tmp_path):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = read_image(_volume(tmp_path / "a"))
    b = read_image(_volume(tmp_path / "b", affine=lps))
    np.testing.assert_array_equal(a, b)


def test_nifti_center_stack(tmp_path):
    stack = read_image(_volume(tmp_path), nifti=NiftiSelection("center_stack", 5))
    assert stack.shape == (5, 10, 12)
    assert stack[:, 5, 5].tolist() == [102, 103, 104, 105, 106]
    with pytest.raises(ImageReadError, match="9 axial slices"):
        read_image(_volume(tmp_path), nifti=NiftiSelection("center_stack", 12))


def test_nifti_random_triplet_deterministic_for_a_seed(tmp_path):
    path = _volume(tmp_path, depth=30)
    sel = NiftiSelection("random_triplet")
    a = read_image(path, nifti=sel, rng=np.random.default_rng(7))
    b = read_image(path, nifti=sel, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    slices = a[:, 5, 5]
    assert a.shape == (3, 10, 12) and len(set(slices)) == 3 and list(slices) == sorted(slices)
    draws = {tuple(read_image(path, nifti=sel, rng=np.random.default_rng(s))[:, 5, 5]) for s in range(6)}
    assert len(draws) > 1


def test_truncated_nifti(tmp_path):
    import nibabel as nib

    volume = np.random.default_rng(0).random((32, 32, 20), dtype=np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 3])  # header intact, voxels cut short
    with pytest.raises(ImageReadError, match="corrupt NIfTI data"):
        read_image(tmp_path / "cut.nii.gz")


# ---------------------------------------------------------------- PNG / JPEG / TIFF


def test_16bit_png_keeps_precision(tmp_path):
    values = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(img, values.astype(np.float32))
    assert np.unique(img).size == 1024 and img.max() > 255


def test_16bit_tiff_and_8bit_jpeg_and_rgb(tmp_path):
    values = (np.arange(32 * 32, dtype=np.uint16) * 50).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), values.astype(np.float32))
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    Image.fromarray(grey).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "a.jpg") - grey).max() < 12
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), 0.587 * 200, rtol=1e-5)


def test_corrupt_and_truncated_png(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "bad.png")
    assert info.value.path == str(tmp_path / "bad.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        tmp_path / "t.png"
    )
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "t.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_a_12_bit_jpeg_extended_dicom_names_the_missing_decoder_not_corruption():
    """Pillow decodes 8-bit JPEG Extended but refuses 12-bit samples: that is a missing decoder, and the
    message says which to install (it used to call the file corrupt)."""
    path = _real("JPEG-lossy.dcm")
    try:
        read_image(path)
    except ImageReadError as err:
        assert "corrupt" not in err.reason and "pylibjpeg" in err.reason and "JPEG Extended" in err.reason
    else:
        pytest.skip("a decoder for 12-bit JPEG Extended is installed here")


def test_dicom_failure_reasons_never_quote_header_values(tmp_path, dicom_writer):
    """Reasons go into the store (`failed_reasons`), skipped.csv and logs: a name typed into a coded field
    (PhotometricInterpretation, Modality, RescaleSlope) must not come back, only the failure's type."""
    import pydicom

    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8)
    cases = {}
    path = dicom_writer(tmp_path / "photometric.dcm", pixels)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "DOE^JOHN"
    ds.save_as(path)
    cases["photometric"] = path
    cases["modality"] = dicom_writer(tmp_path / "modality.dcm", None, modality="DOE^JOHN")
    path = dicom_writer(tmp_path / "slope.dcm", pixels)
    ds = pydicom.dcmread(path)
    ds[0x00281053] = pydicom.DataElement(0x00281053, "LO", "DOE^JOHN")
    ds.save_as(path)
    cases["slope"] = path
    for name, path in cases.items():
        with pytest.raises(ImageReadError) as caught:
            read_image(path)
        reason = caught.value.reason
        assert "DOE" not in reason and "JOHN" not in reason, (name, reason)
    with pytest.raises(ImageReadError, match="Modality CT"):
        read_image(dicom_writer(tmp_path / "ct.dcm", None))
