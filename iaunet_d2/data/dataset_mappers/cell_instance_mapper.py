"""Dataset mapper for cell instance segmentation (registered as "cell_instance")."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from ...io.images import ImageReadError, check_normalization, read_image
from ...io.rle import polygons_to_rle

__all__ = [
    "CellInstanceDatasetMapper",
    "RandomRotation90",
    "Rotation90Transform",
    "build_cell_augmentations",
]

logger = logging.getLogger(__name__)

_FLIP_DIRECTIONS = {"horizontal": dict(horizontal=True, vertical=False),
                    "vertical": dict(horizontal=False, vertical=True)}


class Rotation90Transform(T.Transform):
    """Rotate by ``k`` x 90 degrees counter-clockwise (as displayed), exactly.

    Exact pixel permutation (no interpolation), so masks stay binary and aligned.
    Coordinates are continuous (a pixel spans [x, x + 1)).
    """

    def __init__(self, k, height, width):
        super().__init__()
        self._set_attributes(dict(k=int(k) % 4, height=height, width=width))

    def apply_image(self, img):
        """img: (H, W) or (H, W, C) -> rotated, contiguous."""
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_segmentation(self, segmentation):
        return self.apply_image(segmentation)

    def apply_coords(self, coords):
        """coords: float (N, 2) array of (x, y), modified in place and returned."""
        h, w = self.height, self.width
        for _ in range(self.k):
            x, y = coords[:, 0].copy(), coords[:, 1].copy()
            # One quarter turn: column x becomes row (w - x), row y becomes column y.
            coords[:, 0], coords[:, 1] = y, w - x
            h, w = w, h
        return coords

    def inverse(self):
        h, w = (self.width, self.height) if self.k % 2 else (self.height, self.width)
        return Rotation90Transform(4 - self.k, h, w)


class RandomRotation90(T.Augmentation):
    """Rotate by 0, 90, 180 or 270 degrees, chosen uniformly."""

    def get_transform(self, image):
        k = int(np.random.randint(4))
        if k == 0:
            return T.NoOpTransform()
        return Rotation90Transform(k, image.shape[0], image.shape[1])


def build_cell_augmentations(cfg, is_train):
    """The augmentations of the IAUNet recipe.

    Training: longest side resized to ``IMAGE_SIZE x s`` with ``s ~ U(MIN_SCALE,
    MAX_SCALE)``, a random ``IMAGE_SIZE x IMAGE_SIZE`` crop (padded at the bottom/right
    when smaller, with the mean of ``MODEL.PIXEL_MEAN`` so the padding normalizes to
    ~0 like the model's own padding), the flips of ``INPUT.FLIPS`` and, with
    ``INPUT.ROTATE_90``, random quarter turns. Test: longest side resized to
    ``IMAGE_SIZE``.

    Returns:
        list[detectron2.data.transforms.Augmentation]
    """
    size = cfg.INPUT.IMAGE_SIZE
    if not is_train:
        return [T.ResizeScale(1.0, 1.0, size, size)]
    augmentations = [
        T.ResizeScale(cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, size, size),
        T.FixedSizeCrop((size, size), pad_value=float(np.mean(cfg.MODEL.PIXEL_MEAN))),
    ]
    for direction in cfg.INPUT.FLIPS:
        if direction not in _FLIP_DIRECTIONS:
            raise ValueError(
                f"INPUT.FLIPS: unknown flip {direction!r}; use 'horizontal' and/or 'vertical'."
            )
        augmentations.append(T.RandomFlip(prob=0.5, **_FLIP_DIRECTIONS[direction]))
    if cfg.INPUT.ROTATE_90:
        augmentations.append(RandomRotation90())
    return augmentations


def _polygons_to_rle(annotation, image_shape):
    """Rasterize polygon segmentations to RLE (in place) before transforming.

    Cropping polygons needs shapely in Detectron2 v0.6; a mask crops exactly and
    the mapper produces bitmasks anyway.
    """
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        annotation["segmentation"] = polygons_to_rle(segmentation, *image_shape)
    return annotation


class CellInstanceDatasetMapper:
    """Turns a Detectron2 dataset dict into the model's input for cell images.

    Steps: read the image with :func:`iaunet_d2.io.images.read_image` (any bit
    depth, grayscale repeated to 3 channels, ``INPUT.FORMAT`` channel order), apply
    :func:`build_cell_augmentations`, and in training convert the annotations to
    bitmask instances.

    Output dict:
        "image": torch.uint8 tensor (3, H', W'), contiguous; H' = W' = IMAGE_SIZE in
            training, longest side = IMAGE_SIZE at test.
        "height", "width": size of the original image (predictions are resized back).
        "file_name", "image_id": as in the input.
        "instances" (training only): ``Instances`` of image size (H', W') with
            "gt_boxes" (Boxes, (N, 4), recomputed from the transformed masks),
            "gt_classes" (int64, (N,)) and "gt_masks" (BitMasks, (N, H', W')).
            Instances whose mask vanishes after cropping are dropped; an image left
            with none gets empty Instances (N = 0), which the models handle.

    Errors: an unreadable or corrupt image (:class:`ImageReadError`), or one whose size
    differs from the annotation's (``SizeMismatchError``), in training logs a warning
    naming the file and returns ``None``, so the loader
    (:class:`~iaunet_d2.data.validation.SkipUnreadable`) takes another image; at test
    time the error is raised, because every test image must be evaluated.
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format="BGR",
                 normalization="percentile"):
        """
        Args:
            is_train (bool): training (augment, keep annotations) or inference.
            augmentations (list[Augmentation or Transform]): applied in order.
            image_format (str): "BGR" or "RGB", the channel order of "image".
            normalization (str): intensity normalisation of images that are not
                8-bit (``INPUT.INTENSITY_NORM``, see ``iaunet_d2.io.images``).
        """
        check_normalization(normalization)
        self.normalization = normalization
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        mode = "training" if is_train else "inference"
        logger.info(f"[CellInstanceDatasetMapper] augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if is_train and cfg.INPUT.MASK_FORMAT != "bitmask":
            logger.warning(
                "INPUT.MASK_FORMAT is %r; the cell_instance mapper always produces "
                "bitmasks (gt_masks: BitMasks).", cfg.INPUT.MASK_FORMAT
            )
        return {
            "is_train": is_train,
            "augmentations": build_cell_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "normalization": cfg.INPUT.INTENSITY_NORM,
        }

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one image in Detectron2's dataset format.

        Returns:
            dict or None: see the class docstring; None for an unreadable training image.
        """
        dataset_dict = copy.deepcopy(dataset_dict)  # the dataset's copy stays untouched
        try:
            image = read_image(dataset_dict["file_name"], format=self.image_format,
                               normalization=self.normalization)
            utils.check_image_size(dataset_dict, image)  # also fills height/width if absent
        except (ImageReadError, utils.SizeMismatchError) as e:
            if not self.is_train:
                raise
            # The masks of an image of another size would be misplaced: never train on it.
            logger.warning("Skipping a training image: %s", e)
            return None

        original_shape = image.shape[:2]
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict

        annotations = [
            utils.transform_instance_annotations(
                _polygons_to_rle(obj, original_shape), transforms, image_shape
            )
            for obj in dataset_dict.pop("annotations", [])
            if obj.get("iscrowd", 0) == 0
        ]
        dataset_dict["instances"] = self._to_instances(annotations, image_shape)
        return dataset_dict

    @staticmethod
    def _to_instances(annotations, image_shape):
        """Bitmask Instances with boxes tight around the (transformed) masks."""
        instances = utils.annotations_to_instances(annotations, image_shape, mask_format="bitmask")
        if not instances.has("gt_masks"):
            # No annotation left: keep the fields the models read, with N = 0.
            empty = Instances(image_shape)
            empty.gt_boxes = Boxes(torch.zeros((0, 4), dtype=torch.float32))
            empty.gt_classes = torch.zeros((0,), dtype=torch.int64)
            empty.gt_masks = BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
            return empty
        # Boxes from the masks: after crops and rotations the transformed annotation
        # boxes are loose or wrong, the masks are exact.
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        return utils.filter_empty_instances(instances)
