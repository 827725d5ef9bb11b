"""Files: every place the project finds, reads or writes image, label and json files.

* ``images``: image files in folders, reading any bit depth as 8-bit 3-channel arrays;
* ``labels``: the instance label image of an image, and reading label images;
* ``writers``: atomic writes of files, sets of files, json and images;
* ``rle``: masks as COCO RLE / polygons, their areas and boxes.
"""
from .images import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image  # noqa: F401
from .labels import LABEL_SUFFIXES, find_label_file, read_label_image  # noqa: F401
from .writers import FileSetWriteError, atomic_write, write_file_set, write_json  # noqa: F401
