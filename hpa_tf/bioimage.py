"""bioimage.io model resources (format 0.5) of the exported SavedModels, as the HPA model zoo distributes
models: rdf.yaml, the SavedModel zipped as the `tensorflow_saved_model_bundle` weights (with its sha256),
test input and output tensors computed by the exported model, the axes and the input convention, the
original solution's authors and citation, and a cover drawn by the gallery renderer; checked with
bioimageio.spec before it is kept."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from hpa_tf import viz
from hpa_tf.atomic import file_sha256, write_folder_atomic
from hpa_tf.data.io import read_rgby
from hpa_tf.errors import InferenceError
from hpa_tf.labels import LABEL_NAMES
from hpa_tf.layout import COLORS, DataLayout, RunLayout

log = logging.getLogger(__name__)
FORMAT_VERSION = "0.5.4"
RDF = "rdf.yaml"
SOLUTION_URL = "https://github.com/CellProfiling/HPA-competition-solutions/tree/master/bestfitting"
CITE = [{"text": "Shubin Dai (bestfitting): 1st place solution of the Kaggle Human Protein Atlas Image "
                 "Classification competition (2018)", "url": SOLUTION_URL},
        {"text": "Ouyang W. et al., Analysis of the Human Protein Atlas Image Classification competition, "
                 "Nature Methods 16, 1254-1261 (2019)", "doi": "10.1038/s41592-019-0658-6"}]
AUTHORS = [{"name": "Shubin Dai (bestfitting), the original solution"},
           {"name": "hpa-tf contributors, this TensorFlow reimplementation"}]


@dataclass
class Resource:
    """What differs between the classifier's and the embedder's resource."""

    name: str
    description: str
    output: str  # the signature's output (and the tensor id)
    channels: list[str]  # the output's channel names
    size: int  # the side of the test input (the model resizes any other size to it)
    tags: list[str]
    original: dict | None = None  # original.json of runs imported from the original's trained checkpoint


def identifier(text: str) -> str:
    """A class name as a bioimage.io channel name: lower case, words joined by '_'."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def classifier_resource(crop_size: int, folds: int) -> Resource:
    return Resource(
        "HPA 2018 RGBY localisation classifier (bestfitting - hpa-tf)",
        f"The 1st-place DenseNet121 classifier of the Kaggle Human Protein Atlas Image Classification "
        f"competition, reimplemented in TensorFlow: {folds} fold(s), 8 dihedral views, per-class "
        f"probabilities of the 28 localisation classes.", "probabilities",
        [identifier(name) for name in LABEL_NAMES], crop_size,
        ["human-protein-atlas", "classification", "fluorescence-light-microscopy", "2d", "tensorflow"])


def embedder_resource(img_size: int, dim: int) -> Resource:
    return Resource(
        "HPA 2018 RGBY image embedder (bestfitting ArcFace - hpa-tf)",
        "The metric-learning embedder of the Kaggle Human Protein Atlas Image Classification 1st-place "
        "solution, reimplemented in TensorFlow: an RGBY image -> its embedding, whose cosine finds images "
        "of the same antibody.", "embedding", [f"feature_{i}" for i in range(dim)], img_size,
        ["human-protein-atlas", "embedding", "fluorescence-light-microscopy", "2d", "tensorflow"])


def imported(resource: Resource, run: RunLayout) -> Resource:
    """`resource` naming the original's trained weights when `run` was imported from its checkpoint
    (hpa-import-original), as it is otherwise."""
    if not run.original.is_file():
        return resource
    original = json.loads(run.original.read_text())
    text = (f" The weights are the original solution's own, trained by Shubin Dai (bestfitting) in PyTorch: "
            f"its {original['arch']} checkpoint (sha256 {original['sha256']}), imported into Keras.")
    return dataclasses.replace(resource, description=resource.description + text, original=original)


def zip_saved_model(saved_model: Path, target: Path) -> Path:
    """The SavedModel folder as one zip (the bundle format), entries in sorted order."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in saved_model.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(saved_model).as_posix())
    return target


def test_image(layout: DataLayout, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGBY [H, W, 4], float32 [1, size, size, 4] in [0, 1]): the first test image of the dataset
    and the model's input made of it as the pipeline makes it (bilinear resize of the 0-1 image)."""
    first = layout.sample_submission_csv.read_text().splitlines()[1].split(",")[0]
    rgby = read_rgby(layout, first, "png", "test")
    image = tf.image.resize(tf.constant(rgby[None], tf.float32) / 255.0, [size, size], "bilinear")
    return rgby, image.numpy().astype(np.float32)


def _documentation(resource: Resource) -> str:
    return (f"# {resource.name}\n\n{resource.description}\n\n"
            "## Input\n\nImages `[batch, y, x, channel]`, float32 in [0, 1] (8-bit images divided by 255), "
            "channels red (microtubules), green (the protein), blue (nucleus), yellow (endoplasmic "
            f"reticulum). Any size is accepted: the model resizes it (bilinear) to {resource.size} x "
            f"{resource.size} itself. The SavedModel's `serving_uint8` signature takes the 8-bit images "
            "directly.\n\n"
            f"## Output\n\n`{resource.output}` `[batch, channel]`.\n\n"
            "## Validation\n\nThe test tensors were computed by this exported model on the first test image "
            "of the dataset it was trained on; the validation of its training run is in the hpa-tf README "
            f"(`python infer.py --validate`). Original solution: {SOLUTION_URL}\n")


def rdf(resource: Resource, files: dict[str, Path]) -> dict:
    """The rdf.yaml content (format 0.5) referring to `files` (relative names in the resource folder)."""
    axes_in = [{"type": "batch"}, {"type": "space", "id": "y", "size": resource.size},
               {"type": "space", "id": "x", "size": resource.size},
               {"type": "channel", "channel_names": list(COLORS)}]
    weights_authors = {"authors": [{"name": "Shubin Dai (bestfitting), who trained these weights"}]} \
        if resource.original else {}
    return {
        "format_version": FORMAT_VERSION, "type": "model", "name": resource.name,
        "description": resource.description, "authors": AUTHORS, "cite": CITE, "license": "MIT",
        "documentation": "README.md", "covers": ["cover.png"], "tags": resource.tags,
        "inputs": [{"id": "images", "axes": axes_in, "data": {"type": "float32", "range": [0.0, 1.0]},
                    "test_tensor": {"source": "test_input.npy",
                                    "sha256": file_sha256(files["test_input.npy"])},
                    "description": "RGBY image(s), float32 in [0, 1]"}],
        "outputs": [{"id": resource.output,
                     "axes": [{"type": "batch"}, {"type": "channel", "channel_names": resource.channels}],
                     "test_tensor": {"source": "test_output.npy",
                                     "sha256": file_sha256(files["test_output.npy"])}}],
        "weights": {"tensorflow_saved_model_bundle": {
            "source": "weights.zip", "sha256": file_sha256(files["weights.zip"]),
            "tensorflow_version": tf.__version__.split("+")[0], **weights_authors}},
    }


def write_resource(saved_model: str | Path, resource: Resource, layout: DataLayout, folder: str | Path
                   ) -> Path:
    """A bioimage.io model resource of `saved_model` in `folder` (written whole, atomically), validated
    with bioimageio.spec (InferenceError with its summary when it is not valid)."""
    from bioimageio.spec import load_description
    from bioimageio.spec.utils import write_yaml  # the package's public YAML 1.2 writer

    saved_model, folder = Path(saved_model), Path(folder)
    rgby, image = test_image(layout, resource.size)
    served = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    output = served(images=tf.constant(image))[resource.output].numpy().astype(np.float32)

    def write(temporary: Path) -> None:
        files = {"weights.zip": zip_saved_model(saved_model, temporary / "weights.zip"),
                 "test_input.npy": temporary / "test_input.npy",
                 "test_output.npy": temporary / "test_output.npy"}
        np.save(files["test_input.npy"], image)
        np.save(files["test_output.npy"], output)
        (temporary / "README.md").write_text(_documentation(resource))
        protein = np.repeat(rgby[..., 1:2], 4, axis=-1) * np.array([0, 1, 0, 0], np.uint8)
        tiles = [viz.Tile(viz.thumbnail(rgby), [("RGBY composite", viz.PLAIN)]),
                 viz.Tile(viz.thumbnail(protein), [("green: the protein", viz.PLAIN)])]
        viz.render_gallery([tiles], temporary / "cover.png")  # two tiles: within bioimage.io's 2:1
        write_yaml(rdf(resource, files), temporary / RDF)
        checked = load_description(temporary / RDF, perform_io_checks=True)
        status = checked.validation_summary.status
        if status not in ("valid-format", "passed"):
            raise InferenceError(f"the bioimage.io resource of {saved_model} does not validate ({status}):\n"
                                 f"{checked.validation_summary.format()}")

    write_folder_atomic(folder, write)
    log.info(f"bioimage.io resource written to {folder / RDF}")
    return folder / RDF
