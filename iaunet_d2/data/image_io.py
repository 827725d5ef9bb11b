"""The image reading of :mod:`iaunet_d2.io.images` under its former path, so that
``from iaunet_d2.data.image_io import read_image`` keeps working."""
from ..io.images import *  # noqa: F401,F403
from ..io.images import __all__  # noqa: F401
