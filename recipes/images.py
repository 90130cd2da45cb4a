"""Your own photos: a folder of class folders, any torchvision classifier, from scratch or pretrained.

``fmtk run images --data-dir PHOTOS [--set arch=resnet18] [--set weights=DEFAULT]``. The layouts
are those of :mod:`fmtk.data.folders`; the class names (from the folders) size the model's head and
are recorded in config.json, so ``fmtk predict RUN photo.jpg`` needs nothing else.
"""

import dataclasses

from torch import nn

from fmtk import Check, Preset, Recipe
from fmtk.data import ImageInput, load_photo_folder, photo_classes
from fmtk.data.image_input import IMAGENET_MEAN, IMAGENET_STD
from fmtk.errors import FmtkError
from fmtk.weights import check_image_size, torchvision_model, weights_transform

DEFAULT_SIZE = 224  # without torchvision weights to say otherwise


def from_data(recipe, data_dir):
    """The photo folder's class names and the image size (recorded in config.json)."""
    given, classes = recipe.options["classes"], photo_classes(data_dir)
    if given and list(given) != classes:  # said before the photos decode
        raise FmtkError(f"{data_dir}: its class folders are {', '.join(classes)}, not classes="
                        f"{','.join(given)} as given; leave classes out: the folders name them")  # fmt: skip
    options = {**recipe.options, "classes": classes, "image_size": size(recipe)}
    return dataclasses.replace(recipe, options=options)


def size(recipe):
    """``image_size``; 0: the weights' own (torchvision's crop size), else 224."""
    if not isinstance(recipe.options["image_size"], int) or recipe.options["image_size"] < 0:
        raise FmtkError(f"image_size={recipe.options['image_size']}: expected a whole number of pixels, "
                        "1 or more (0: the weights' own size)")  # fmt: skip
    if recipe.options["image_size"]:
        return recipe.options["image_size"]
    transform = weights_transform(recipe.weights, recipe.options["arch"])
    return transform.crop_size[0] if transform is not None else DEFAULT_SIZE


def normalisation(recipe):
    """The mean and std of the weights' inputs (torchvision's own), else ImageNet's."""
    transform = weights_transform(recipe.weights, recipe.options["arch"])
    if transform is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(transform.mean), tuple(transform.std)


def model(recipe: Recipe) -> nn.Module:
    classes = recipe.options["classes"]
    if not classes:
        raise FmtkError(
            "recipe images: the class names come from the photos (--data-dir PHOTOS) or --set classes=a,b"
        )
    if len(classes) < 2:  # as a photo folder of one class is refused
        raise FmtkError(f"recipe images: classes {list(classes)}: a classifier needs two or more")
    model = torchvision_model(recipe.options["arch"], len(classes))
    check_image_size(model, recipe.options["arch"], size(recipe))  # its refusal is one line, not a traceback
    return model


def data(recipe, data_dir, device):
    options = recipe.options
    for name in ("valid_share", "test_share"):
        if not 0 < options[name] < 1:
            raise FmtkError(f"recipe images: {name} must be in (0, 1), got {options[name]}")
    mean, std = normalisation(recipe)
    splits = load_photo_folder(
        data_dir, size(recipe), recipe.batch_size, device, recipe.seed, valid_share=options["valid_share"],
        test_share=options["test_share"], data_cache=options["data_cache"], mean=mean, std=std,
        skip_bad_images=options["skip_bad_images"], drop_near_copies=options["drop_near_copies"],
    )  # fmt: skip
    if splits.classes != options["classes"]:
        raise FmtkError(f"{data_dir}: classes {splits.classes} differ from the run's {options['classes']}")
    return splits


def image_input(recipe):
    return ImageInput.photo(size(recipe), *normalisation(recipe))


recipe = Recipe(
    name="images",
    description=__doc__.splitlines()[0],
    model=model,
    data=data,
    from_data=from_data,
    image_input=image_input,
    optimizer="AdamW",
    lr=1e-3,
    weight_decay=0.05,
    batch_size=32,
    epochs=15,
    schedule="cosine",
    warmup_epochs=1.0,
    label_smoothing=0.1,
    augment_flip=0.5,
    augment_crop=0.35,
    options={
        "arch": "resnet18",  # any of torchvision.models.list_models(module=torchvision.models)
        "image_size": 0,  # 0: the weights' own (224 for most), 224 from scratch
        "valid_share": 0.2,  # of the training photos, when there is no val/ folder
        "test_share": 0.2,  # of all photos, when there is no test/ folder
        "data_cache": "memory",  # memory, file (kept for the next run) or none (DataLoader workers)
        "skip_bad_images": False,  # train without the files that cannot be decoded (recorded), not stop
        "drop_near_copies": False,  # leave valid/test photos that are near copies out of them (recorded)
        "classes": [],  # filled from the photo folder
    },
    presets={
        "finetune": Preset(
            "pretrained weights fine-tuned: torchvision's DEFAULT for the arch, a tenth of the LR, 5 epochs",
            {"weights": "DEFAULT", "lr": 1e-4, "epochs": 5, "warmup_epochs": 0.0, "augment_crop": 0.5},
        ),
    },
    # Regression check (fmtk check): resnet18 from scratch on the Cat & Dog photos as a user's folder,
    # at 64 px and 2 epochs: 63.20% test, best = last (2026-12-01, two threads). At 32 px it scored
    # 58.20%, too near chance (50% ± 2.2%) to guard anything.
    check=Check(
        epochs=2,
        settings={"image_size": 64},
        data="catdog",
        expect={"test_accuracy": ">= 0.58", "last_test_accuracy": ">= 0.58"},
    ),
)
