"""Image sources of a manifest cell: NIfTI files and DICOM series, read the same way.

``SiteImageReader`` is the MONAI reader every site uses (``LoadSiteImaged``): a
DICOM series folder (or a ``.dcm`` file) is checked by ``common.dicom.read_series``
and loaded by MONAI's ``PydicomReader`` (HU via RescaleSlope/Intercept, LPS
converted to RAS, rows/columns swapped to (X, Y) like NIfTI); anything else is
loaded by ``NibabelReader``. ``image_geometry`` reads shape and voxel spacing
from headers only (nibabel header, DICOM tags), for summaries that must not
load voxel data.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.config import PathLike
from monai.data import ImageReader, NibabelReader, PydicomReader
from monai.transforms import LoadImage, MapTransform
from monai.utils import MetaKeys, ensure_tuple

from common.dicom import is_dicom_source, read_series

# MONAI's optional GPU DICOM decoder announces its absence on every LoadImage; CPU decoding
# is what hepafed uses, so that is not news for a site operator.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def _load_image() -> LoadImage:
    """MONAI's ``LoadImage`` without the warnings its optional readers give when absent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        return LoadImage(image_only=True)


@dataclass(frozen=True)
class ImageGeometry:
    """Spatial shape and voxel spacing (mm) along the loaded array's axes."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]


class SiteImageReader(ImageReader):
    """NIfTI through nibabel, DICOM series through pydicom; one reader for every key."""

    def __init__(self) -> None:
        super().__init__()
        self._nifti = NibabelReader()
        self._dicom = PydicomReader()

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Every manifest image cell is either a NIfTI file or a DICOM source."""
        return True

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Check a DICOM series before loading it; returns (reader, image) for ``get_data``."""
        names = [Path(str(n)) for n in ensure_tuple(data)]
        if all(is_dicom_source(n) for n in names):
            for n in names:
                if n.is_dir():
                    read_series(n)  # raises DicomSeriesError, naming what is wrong
            return self._dicom, self._dicom.read(data, **kwargs)
        return self._nifti, self._nifti.read(data, **kwargs)

    def get_data(self, img: Any) -> tuple[Any, dict[str, Any]]:
        """The array and metadata from the reader that read ``img``.

        A single slice (a one-file series, or a 2-D file) comes back as (X, Y, 1),
        the shape a NIfTI slice has, so the 2-D pipeline treats both alike.
        """
        reader, image = img
        array, meta = reader.get_data(image)
        if array.ndim == 2:
            array = array[..., None]
            meta[MetaKeys.SPATIAL_SHAPE] = (*(int(s) for s in array.shape[:2]), 1)
        return array, meta


class LoadSiteImaged(MapTransform):
    """``LoadImaged`` with ``SiteImageReader`` only.

    ``LoadImaged(reader=...)`` falls back to MONAI's other readers when the given
    one fails, which would load a series the checks rejected; this does not.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__(keys=list(keys))
        self._loader = _load_image()
        self._reader = SiteImageReader()

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._loader(d[key], reader=self._reader)
        return d


def load_image(path: Path | str) -> Any:
    """One image (NIfTI or DICOM series) as a MONAI ``MetaTensor``, as the pipeline loads it."""
    return _load_image()(str(path), reader=SiteImageReader())


def image_geometry(path: Path | str) -> ImageGeometry:
    """Shape and spacing from headers only (no voxel data is read)."""
    p = Path(path)
    if p.is_dir():
        series = read_series(p)
        return ImageGeometry(series.shape, series.spacing)
    if is_dicom_source(p):
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True)
        row_mm, col_mm = (float(v) for v in ds.get("PixelSpacing", (1.0, 1.0)))
        return ImageGeometry((int(ds.Columns), int(ds.Rows)), (col_mm, row_mm))
    import nibabel as nib

    header: Any = nib.load(str(p)).header  # lazy: the voxel data stays on disk
    shape = tuple(int(s) for s in header.get_data_shape())
    zooms = tuple(float(z) for z in header.get_zooms())
    return ImageGeometry(shape[:3], zooms[: min(3, len(shape))])
