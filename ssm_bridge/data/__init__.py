"""Data for ssm-bridge: the procedural scene world, a word-level tokenizer, image
transforms, and torch datasets (scene captions / VQA, COCO captions).

    from ssm_bridge.data import SceneCaptions, Tokenizer, make_scene
    scene = make_scene("train", 0)            # image, objects, caption, paraphrases, qa
    tok = Tokenizer.for_scenes()
    ds = SceneCaptions("train", 10_000, tokenizer=tok, task="mixed")
"""

from .captions import NUMBERS, QA_KINDS, RELATIONS, SIZES
from .coco import CocoCaptions, build_tokenizer_from_coco, read_coco_records
from .datasets import (
    IGNORE,
    TASKS,
    SceneCaptions,
    SceneExample,
    choose_example,
    collate,
    encode_example,
    render_batch,
)
from .drawing import BACKGROUNDS, PALETTE, SHAPE_POLYGONS
from .scenes import (
    SPLITS,
    Scene,
    SceneConfig,
    SceneObject,
    counterfactual_scene,
    generate_scene,
    make_scene,
    scene_vocabulary,
    split_seeds,
)
from .tokenizer import SPECIALS, Tokenizer
from .transforms import ImageTransform, open_image, to_rgb

COLOURS = tuple(PALETTE)  # every colour the scene world can draw
SHAPES = tuple(SHAPE_POLYGONS)  # every shape it can draw

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "IGNORE",
    "NUMBERS",
    "QA_KINDS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPECIALS",
    "SPLITS",
    "TASKS",
    "CocoCaptions",
    "ImageTransform",
    "Scene",
    "SceneCaptions",
    "SceneConfig",
    "SceneExample",
    "SceneObject",
    "Tokenizer",
    "build_tokenizer_from_coco",
    "choose_example",
    "collate",
    "counterfactual_scene",
    "encode_example",
    "generate_scene",
    "make_scene",
    "open_image",
    "read_coco_records",
    "render_batch",
    "scene_vocabulary",
    "split_seeds",
    "to_rgb",
]
